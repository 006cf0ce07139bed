"""SPair-U as the ``spair-u`` split of ``spair`` (and the alias dataset ``spair-u``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from corrbench.errors import DataError, MissingDataError
from corrbench.testing.datasets import LoopbackServer, write_spair_fixture
from corrbench.testing.fixtures_pf import (pck_bounds, run_and_load, run_values, write_spair_u_fixture,
                                           zip_folder)
from corrbench_datasets.spair import SPairDataset
from corrbench_datasets.spair_u import SPairUDataset, find_pair_folder


@pytest.fixture(scope="module")
def spair_fx(tmp_path_factory):
    return write_spair_fixture(tmp_path_factory.mktemp("spu") / "SPair-71k")


@pytest.fixture(scope="module")
def inside(spair_fx):
    return write_spair_u_fixture(spair_fx, where="inside")


def _check(pairs, fx, spair_root: Path):
    assert [p.id for p in pairs] == [stem for stem, _ in fx.pairs]
    for pair, (_, obj) in zip(pairs, fx.pairs):
        np.testing.assert_array_equal(pair.source_points, np.asarray(obj["src_kps"], dtype=float))
        np.testing.assert_array_equal(pair.target_points, np.asarray(obj["trg_kps"], dtype=float))
        assert pair.target_box == tuple(float(v) for v in obj["trg_bndbox"])
        assert pair.target == spair_root / "JPEGImages" / obj["category"] / obj["trg_imname"]
        assert pair.metadata["keypoint_ids"] == [int(k) for k in obj["kps_ids"]]


def test_split_reads_extra_pair_annotation_inside_the_spair_folder(spair_fx, inside):
    ds = SPairDataset(root=spair_fx.root, split="spair-u")
    pairs = list(ds.pairs())
    assert len(pairs) == len(inside.pairs) > 0
    _check(pairs, inside, spair_fx.root)
    # the new points are not SPair's: at least one pair differs from its SPair-71k original
    original = dict(spair_fx.pairs["test"])
    assert any(obj["trg_kps"] != original[stem]["trg_kps"] for stem, obj in inside.pairs)
    assert ds.protocol()["pair_folder"] == str(inside.folder)
    assert ds.mirror_partners("cat") == {}  # SPair-U's new points have no published left/right names
    assert SPairDataset(root=spair_fx.root, split="test").mirror_partners("cat")["0"] == "1"


def test_alias_dataset_and_category_filter(spair_fx, inside):
    assert [p.id for p in SPairUDataset(root=spair_fx.root).pairs()] == [s for s, _ in inside.pairs]
    cats = SPairDataset(root=spair_fx.root, split="spair-u", config={"categories": "bus"})
    assert {p.category for p in cats.pairs()} == {"bus"}


def test_sibling_and_configured_folders(spair_fx, tmp_path):
    root = tmp_path / "SPair-71k"
    shutil.copytree(spair_fx.root, root, ignore=shutil.ignore_patterns("Extra*"))
    with pytest.raises(MissingDataError,
                       match=r"SPair-U annotations not found: .*SPair-U.*corrbench data download spair-u"):
        SPairDataset(root=root, split="spair-u").prepare()
    copy_fx = write_spair_fixture(tmp_path / "other" / "SPair-71k")  # same seed: same SPair pairs
    sib = write_spair_u_fixture(copy_fx, where="sibling")
    shutil.move(str(tmp_path / "other" / "SPair-U"), str(tmp_path / "SPair-U"))
    folder = find_pair_folder(root)
    assert folder == tmp_path / "SPair-U" / "SPair-U" / "PairAnnotation" / "test"
    _check(list(SPairDataset(root=root, split="spair-u").pairs()), sib, root)
    moved = tmp_path / "elsewhere"
    shutil.move(str(tmp_path / "SPair-U"), str(moved))
    ds = SPairDataset(root=root, split="spair-u", config={"spair_u": str(moved)})
    assert len(list(ds.pairs())) == len(sib.pairs)


def test_malformed_pair_file_names_the_file(spair_fx, inside, tmp_path):
    root = tmp_path / "SPair-71k"
    shutil.copytree(spair_fx.root, root)
    bad = root / "ExtraPairAnnotation" / "test" / f"{inside.pairs[0][0]}.json"
    bad.write_text('{"category": "cat"')
    with pytest.raises(DataError, match=r"ExtraPairAnnotation/test/.*\.json: malformed JSON"):
        list(SPairDataset(root=root, split="spair-u").pairs())


def test_end_to_end_pck_matches_a_float64_reference(spair_fx, inside, tmp_path):
    results, preds = run_and_load("spair", spair_fx.root, tmp_path / "out", "--split", "spair-u")
    metrics = results["methods"]["dsift"]["metrics"]
    by_id = {p["pair"]: p for p in preds}
    assert len(by_id) == len(inside.pairs)
    d, L = [], []
    for stem, obj in inside.pairs:
        pred = np.asarray(by_id[stem]["predicted_points"], dtype=np.float64)
        l, t, r, b = obj["trg_bndbox"]
        for k, (x, y) in enumerate(obj["trg_kps"]):
            d.append(float(np.hypot(pred[k, 0] - x, pred[k, 1] - y)))
            L.append(float(max(r - l, b - t)))
    lo, hi = pck_bounds(d, L)
    assert lo - 1e-9 <= metrics["pck@0.10_bbox"] <= hi + 1e-9
    run_d, run_L = run_values(preds, [stem for stem, _ in inside.pairs], "bbox")
    np.testing.assert_allclose(run_d, d, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(run_L, L)


def test_download_unpacks_beside_spair(spair_fx, inside, tmp_path, monkeypatch):
    from corrbench.cli import build_cli

    root = tmp_path / "data" / "SPair-71k"
    shutil.copytree(spair_fx.root, root, ignore=shutil.ignore_patterns("Extra*"))
    staged = tmp_path / "staged"
    shutil.copytree(inside.folder, staged / "PairAnnotation" / "test")
    with LoopbackServer({"/SPair-U.zip": zip_folder(staged, "SPair-U")}) as srv:
        monkeypatch.setenv("CORRBENCH_SPAIR_U_URL", f"{srv.url}/SPair-U.zip")
        res = CliRunner().invoke(build_cli(), ["data", "download", "spair-u", "--root", str(root), "--no-progress"])
        assert res.exit_code == 0, res.output + repr(res.exception)
    assert find_pair_folder(root) == tmp_path / "data" / "SPair-U" / "SPair-U" / "PairAnnotation" / "test"
    assert len(list(SPairUDataset(root=root).pairs())) == len(inside.pairs)
    res = CliRunner().invoke(build_cli(), ["data", "verify", "spair-u", "--root", str(root)])
    assert res.exit_code == 0 and "spair-u: ok" in res.output, res.output
