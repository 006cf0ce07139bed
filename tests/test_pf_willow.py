"""PF-WILLOW reader and dataset: 42-column CSV, tight target-keypoint box, -1 padding never a point."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from corrbench.errors import DataError, MissingDataError
from corrbench.testing import invoke_cli
from corrbench.testing.datasets import LoopbackServer
from corrbench.testing.fixtures_pf import (pck_bounds, run_and_load, run_values, write_pf_willow_fixture,
                                           zip_folder)
from corrbench_datasets.pf_willow import PFWillowDataset, pair_csv, parse_row


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return write_pf_willow_fixture(tmp_path_factory.mktemp("pfw") / "PF-dataset")


def _valid(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """Rows where neither image has a -1 entry (an independent, loop-based mask)."""
    return np.array([not (-1.0 in (pa[k, 0], pa[k, 1], pb[k, 0], pb[k, 1])) for k in range(len(pa))])


def _naive_L(points: np.ndarray) -> float:
    xs, ys = [float(p[0]) for p in points], [float(p[1]) for p in points]
    return max(max(xs) - min(xs), max(ys) - min(ys))


def test_fixture_has_padding_and_png_images(fx):
    assert sum(int((pa == -1).any() or (pb == -1).any()) for _, _, pa, pb in fx.rows) == 3
    assert all((fx.root / f"{k}.png").is_file() for k in fx.images)
    assert all(size[0] != size[1] for size, _ in fx.images.values())


def test_pairs_drop_padding_and_box_the_valid_target_keypoints(fx):
    ds = PFWillowDataset(root=fx.root)
    pairs = list(ds.pairs())
    assert len(pairs) == len(fx.rows) == 12
    for pair, (a, b, pa, pb) in zip(pairs, fx.rows):
        keep = _valid(pa, pb)
        assert pair.source == fx.root / f"{a}.png" and pair.target == fx.root / f"{b}.png"
        assert pair.category == a.split("/")[0]
        np.testing.assert_array_equal(pair.source_points, pa[keep])
        np.testing.assert_array_equal(pair.target_points, pb[keep])
        assert not (pair.target_points == -1).any() and not (pair.source_points == -1).any()
        l, t, r, b = pair.target_box
        assert max(r - l, b - t) == _naive_L(pb[keep])
        assert pair.metadata["keypoint_ids"] == [k for k in range(10) if keep[k]]
    assert ds.counts["padding_dropped"] == 3
    proto = ds.protocol()
    assert proto["standard_norm"] == "bbox" and proto["bbox_is"] == "tight box of the target keypoints"
    assert proto["padding_dropped"] == 3 and ds.mirror_partners("car(S)") == {}


def test_keeping_the_padding_would_inflate_the_threshold(fx):
    """The DHPF bug: -1 entries in the extent stretch the box to (-1, -1) and loosen every threshold."""
    pairs = {(p.source.relative_to(fx.root).with_suffix("").as_posix(), p.target.relative_to(fx.root)
              .with_suffix("").as_posix()): p for p in PFWillowDataset(root=fx.root).pairs()}
    inflated = 0
    for a, b, pa, pb in fx.rows:
        if not (pb == -1).any():
            continue
        buggy_L = _naive_L(pb)  # the whole row, padding included
        right_L = _naive_L(pb[_valid(pa, pb)])
        pair = pairs[(a, b)]
        l, t, r, bt = pair.target_box
        assert max(r - l, bt - t) == right_L < buggy_L
        # a prediction between the two thresholds counts as correct only under the bug
        d = 0.1 * (right_L + buggy_L) / 2
        assert d > 0.1 * right_L and d <= 0.1 * buggy_L
        inflated += 1
    assert inflated == 2


@pytest.mark.parametrize("mutate, message", [
    (lambda f: f[:30], "30 columns, expected 42"),
    (lambda f: f[:5] + ["x"] + f[6:], "column 6 must be a number"),
    (lambda f: f[:2] + ["-1"] * 40, "every keypoint is padding"),
    (lambda f: ["/etc/passwd"] + f[1:], "must be relative to the dataset folder"),
])
def test_malformed_rows_name_the_file_and_line(fx, tmp_path, mutate, message):
    root = tmp_path / "PF-dataset"
    shutil.copytree(fx.root, root)
    lines = (root / "test_pairs_pf.csv").read_text().splitlines()
    lines[3] = ",".join(mutate(lines[3].split(",")))
    (root / "test_pairs_pf.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"test_pairs_pf.csv: line 4: .*{message}"):
        list(PFWillowDataset(root=root).pairs())
    ds = PFWillowDataset(root=root, skip_invalid=True)
    with pytest.warns(UserWarning):
        assert len(list(ds.pairs())) == len(fx.rows) - 1
    assert len(ds.skipped) == 1


def test_cli_reports_a_malformed_row_in_one_line(fx, tmp_path):
    root = tmp_path / "PF-dataset"
    shutil.copytree(fx.root, root)
    lines = (root / "test_pairs_pf.csv").read_text().splitlines()
    lines[2] = lines[2].replace(",", ",abc,", 1)
    (root / "test_pairs_pf.csv").write_text("\n".join(lines) + "\n")
    code, _, err = invoke_cli(["run", "-m", "dsift", "--dataset", "pf-willow", "--data-root", str(root), "-q",
                               "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "out")])
    assert code == 1 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "test_pairs_pf.csv: line 3: column" in err


def test_csv_beside_the_folder_is_found_and_a_missing_one_is_named(fx, tmp_path):
    root = tmp_path / "PF-dataset"
    shutil.copytree(fx.root, root)
    (root / "test_pairs_pf.csv").rename(tmp_path / "test_pairs_pf.csv")
    assert pair_csv(root) == tmp_path / "test_pairs_pf.csv"
    assert len(list(PFWillowDataset(root=root).pairs())) == len(fx.rows)
    (tmp_path / "test_pairs_pf.csv").unlink()
    with pytest.raises(MissingDataError, match=r"test_pairs_pf.csv: PF-WILLOW pair list is missing"):
        PFWillowDataset(root=root).prepare()


def test_end_to_end_pck_matches_a_float64_reference(fx, tmp_path):
    results, preds = run_and_load("pf-willow", fx.root, tmp_path / "out")
    metrics = results["methods"]["dsift"]["metrics"]
    by_pair = {(Path(p["source"]).relative_to(fx.root).with_suffix("").as_posix(),
                Path(p["target"]).relative_to(fx.root).with_suffix("").as_posix()): p for p in preds}
    d, L = [], []
    for a, b, pa, pb in fx.rows:
        keep = _valid(pa, pb)
        gt = pb[keep]
        pred = np.asarray(by_pair[(a, b)]["predicted_points"], dtype=np.float64)
        assert pred.shape == gt.shape
        for k in range(len(gt)):
            d.append(float(np.hypot(pred[k, 0] - gt[k, 0], pred[k, 1] - gt[k, 1])))
            L.append(_naive_L(gt))
    lo, hi = pck_bounds(d, L)
    assert lo - 1e-9 <= metrics["pck@0.10_bbox"] <= hi + 1e-9
    run_d, run_L = run_values(preds, [by_pair[(a, b)]["pair"] for a, b, _, _ in fx.rows], "bbox")
    np.testing.assert_allclose(run_d, d, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(run_L, L)
    assert results["dataset"]["protocol"]["padding_dropped"] == 3


def test_download_verify_info_against_a_loopback_server(fx, tmp_path, monkeypatch):
    from corrbench.cli import build_cli

    bare = tmp_path / "bare"
    shutil.copytree(fx.root, bare, ignore=shutil.ignore_patterns("*.csv"))
    files = {"/PF-dataset.zip": zip_folder(bare, "PF-dataset"),
             "/other/test_pairs_pf.csv": (fx.root / "test_pairs_pf.csv").read_bytes()}
    root = tmp_path / "data" / "PF-dataset"
    with LoopbackServer(files) as srv:
        monkeypatch.setenv("CORRBENCH_PF_WILLOW_URL", f"{srv.url}/PF-dataset.zip")
        monkeypatch.setenv("CORRBENCH_PF_WILLOW_CSV_URL", f"{srv.url}/other/test_pairs_pf.csv")
        res = CliRunner().invoke(build_cli(), ["data", "download", "pf-willow", "--root", str(root), "--no-progress"])
        assert res.exit_code == 0, res.output + repr(res.exception)
    assert (root / "test_pairs_pf.csv").read_bytes() == (fx.root / "test_pairs_pf.csv").read_bytes()
    assert (root / "car(S)" / "Cars_000a.png").is_file()
    res = CliRunner().invoke(build_cli(), ["data", "verify", "pf-willow", "--root", str(root)])
    assert res.exit_code == 0 and "pf-willow: ok" in res.output, res.output
    res = CliRunner().invoke(build_cli(), ["data", "info", "pf-willow", "--root", str(root), "--json"])
    assert res.exit_code == 0 and '"test": 12' in res.output


_field = st.one_of(st.sampled_from(["-1", "0", "3.5", "nan", "inf", "", "x", "1e400", "-0", "12"]),
                   st.text(max_size=6))


@settings(max_examples=200, deadline=None)
@given(st.lists(_field, max_size=45))
def test_row_parser_raises_only_data_errors_naming_the_line(fields):
    where = "test_pairs_pf.csv: line 7"
    try:
        src, trg, keep = parse_row(["a.png", "b.png", *fields], where)
    except DataError as exc:
        assert where in str(exc)
    else:
        assert src.shape == trg.shape == (10, 2) and keep.shape == (10,)
        assert np.isfinite(src).all() and np.isfinite(trg).all()
        assert not ((src[keep] == -1).any() or (trg[keep] == -1).any())
