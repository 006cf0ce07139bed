"""PF-PASCAL reader and dataset on a fixture in the exact NCNet layout (.mat annotations, CSV pair lists)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from corrbench.errors import DataError, MissingDataError
from corrbench.testing.datasets import LoopbackServer
from corrbench.testing import invoke_cli
from corrbench.testing.fixtures_pf import (pck_bounds, run_and_load, run_values, write_pf_pascal_fixture,
                                           zip_folder)
from corrbench_datasets.pf_pascal import VOC_CLASSES, PFPascalDataset, read_mat


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return write_pf_pascal_fixture(tmp_path_factory.mktemp("pfp") / "PF-dataset-PASCAL")


@pytest.fixture
def copy(fx, tmp_path):
    root = tmp_path / "PF-dataset-PASCAL"
    shutil.copytree(fx.root, root)
    return root


def _raise(msg, exc):
    raise DataError(msg) from exc


def test_fixture_has_nan_rows_and_nonsquare_images(fx):
    assert all(np.isnan(r.kps).any() for r in fx.images.values())
    assert all(r.size[0] != r.size[1] for r in fx.images.values())
    stem = next(s for s, r in fx.images.items() if r.category == "cat")
    kps, _ = read_mat(fx.root / "Annotations" / "cat" / f"{stem}.mat")
    assert kps.shape[1] == 2 and np.isnan(kps).any()


def test_test_split_points_boxes_and_categories(fx):
    pairs = list(PFPascalDataset(root=fx.root, split="test").pairs())
    assert len(pairs) == len(fx.rows["test"]) == 8
    for pair, (a, b, cat, _, mutual) in zip(pairs, fx.rows["test"]):
        A, B = fx.images[a], fx.images[b]
        assert pair.source == fx.root / "JPEGImages" / f"{a}.jpg" and pair.target.is_file()
        assert pair.category == cat
        np.testing.assert_array_equal(pair.source_points, A.kps[mutual])
        np.testing.assert_array_equal(pair.target_points, B.kps[mutual])
        assert pair.target_box == B.bbox and pair.source_box == A.bbox  # from the .mat files
        assert pair.metadata["keypoint_ids"] == mutual
        assert pair.problems() == []


def test_val_and_train_use_mat_rows_and_skip_flipped_rows(fx):
    ds = PFPascalDataset(root=fx.root, split="train")
    pairs = list(ds.pairs())
    unflipped = [r for r in fx.rows["train"] if r[3] == 0]
    assert len(pairs) == len(unflipped) and ds.counts["flipped_skipped"] == len(fx.rows["train"]) - len(unflipped)
    dropped = 0
    for pair, (a, b, _, _, mutual) in zip(pairs, unflipped):
        np.testing.assert_array_equal(pair.source_points, fx.images[a].kps[mutual])
        np.testing.assert_array_equal(pair.target_points, fx.images[b].kps[mutual])
        assert np.isfinite(pair.source_points).all() and pair.metadata["keypoint_ids"] == mutual
        dropped += len(fx.images[a].kps) - len(mutual)
    assert ds.counts["nan_rows_dropped"] == dropped > 0
    assert len(list(PFPascalDataset(root=fx.root, split="val").pairs())) == len(fx.rows["val"])


def test_dhpf_repackaged_layout_reads_mat_keypoints(fx, tmp_path):
    """DHPF's copy: PF-PASCAL/{trn,val,test}_pairs.csv; without XA..YB columns the .mat rows are used."""
    root = tmp_path / "PF-PASCAL"
    shutil.copytree(fx.root, root, ignore=shutil.ignore_patterns("*.csv"))
    rows = ["source_image,target_image,class"] + [f"PF-PASCAL/JPEGImages/{a}.jpg,JPEGImages/{b}.jpg,"
                                                  f"{VOC_CLASSES.index(c) + 1}"
                                                  for a, b, c, _, _ in fx.rows["test"]]
    (root / "test_pairs.csv").write_text("\n".join(rows) + "\n")
    shutil.copy(fx.root / "train_pairs_pf_pascal.csv", root / "trn_pairs.csv")
    ds = PFPascalDataset(root=root)
    pairs = list(ds.pairs())
    assert len(pairs) == len(fx.rows["test"]) and ds.counts["keypoints_from"] == "mat"
    for pair, (a, b, _, _, mutual) in zip(pairs, fx.rows["test"]):
        np.testing.assert_array_equal(pair.target_points, fx.images[b].kps[mutual])
        assert pair.target == root / "JPEGImages" / f"{b}.jpg"
    assert len(list(PFPascalDataset(root=root, split="train").pairs())) == len(fx.rows["train"]) // 2


def test_protocol_records_the_standard(fx):
    ds = PFPascalDataset(root=fx.root)
    list(ds.pairs())
    proto = ds.protocol()
    assert proto["standard_norm"] == "img" and proto["standard_alphas"] == [0.05, 0.1, 0.15]
    listed = (fx.root / "test_pairs_pf_pascal.csv").read_bytes()
    assert proto["pair_list_sha256"] == hashlib.sha256(listed).hexdigest()
    assert ds.mirror_partners("cat") == {}


def _edit_csv(root: Path, name: str, line: int, new: str | None) -> None:
    p = root / name
    lines = p.read_text().splitlines()
    if new is None:
        del lines[line - 1]
    else:
        lines[line - 1] = new
    p.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("line, new, message", [
    (1, "src,trg,class,XA,YA,XB,YB", "header"),
    (2, "PF-dataset-PASCAL/JPEGImages/a.jpg,PF-dataset-PASCAL/JPEGImages/b.jpg,21,1,1,1,1", "class 21 is outside"),
    (2, "PF-dataset-PASCAL/JPEGImages/a.jpg,PF-dataset-PASCAL/JPEGImages/b.jpg,x,1,1,1,1", "class must be an integer"),
    (2, "PF-dataset-PASCAL/JPEGImages/a.jpg,PF-dataset-PASCAL/JPEGImages/b.jpg,8,1,1,1,1", "a.mat: annotation file is missing"),
    (2, "../../etc/passwd,PF-dataset-PASCAL/JPEGImages/b.jpg,8,1,1,1,1", "must be relative to the dataset folder"),
    (2, "a.jpg,b.jpg,8", "3 fields, expected 7"),
])
def test_malformed_rows_name_the_file_and_line(copy, line, new, message):
    _edit_csv(copy, "test_pairs_pf_pascal.csv", line, new)
    with pytest.raises(DataError, match=message) as info:
        list(PFPascalDataset(root=copy).pairs())
    assert "test_pairs_pf_pascal.csv" in str(info.value)


def test_bad_coordinates_and_mat_files_are_errors_or_counted_skips(copy, fx):
    lines = (copy / "test_pairs_pf_pascal.csv").read_text().splitlines()
    fields = lines[1].split(",")
    fields[3] = fields[3] + ";7"  # XA one longer than YA
    lines[1] = ",".join(fields)
    fields = lines[2].split(",")
    fields[4] = "1;x;3"
    lines[2] = ",".join(fields)
    (copy / "test_pairs_pf_pascal.csv").write_text("\n".join(lines) + "\n")
    a, b, cat, _, _ = fx.rows["test"][3]
    (copy / "Annotations" / cat / f"{b}.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match=r"test_pairs_pf_pascal.csv.* line 2"):
        list(PFPascalDataset(root=copy).pairs())
    ds = PFPascalDataset(root=copy, skip_invalid=True)
    with pytest.warns(UserWarning):
        pairs = list(ds.pairs())
    text = "\n".join(ds.skipped)
    assert "line 2: XA, YA, XB, YB have" in text and "line 3: YA must be a number" in text
    assert f"{b}.mat: cannot read the .mat" in text
    assert len(pairs) + len(ds.skipped) == len(fx.rows["test"])


def test_mat_without_kps_is_named(tmp_path):
    import scipy.io

    scipy.io.savemat(str(tmp_path / "x.mat"), {"bbox": np.array([[1.0, 2.0, 3.0, 4.0]])})
    with pytest.raises(DataError, match=r"x.mat: missing variable 'kps'"):
        read_mat(tmp_path / "x.mat")
    scipy.io.savemat(str(tmp_path / "y.mat"), {"kps": np.zeros((3, 3)), "bbox": np.array([[1.0, 2.0, 3.0, 4.0]])})
    with pytest.raises(DataError, match=r"y.mat: kps must be a K × 2"):
        read_mat(tmp_path / "y.mat")


def test_missing_pair_list_and_root_say_how_to_get_them(tmp_path):
    with pytest.raises(MissingDataError, match="corrbench data download pf-pascal"):
        PFPascalDataset(root=tmp_path / "nope").prepare()
    (tmp_path / "PF-dataset-PASCAL").mkdir()
    with pytest.raises(MissingDataError, match="test_pairs_pf_pascal.csv: PF-PASCAL test pair list is missing"):
        PFPascalDataset(root=tmp_path / "PF-dataset-PASCAL").prepare()
    code, _, err = invoke_cli(["run", "-m", "dsift", "--dataset", "pf-pascal", "--data-root", str(tmp_path / "nope")])
    assert code == 1 and "Traceback" not in err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1


def test_end_to_end_pck_matches_a_float64_reference(fx, tmp_path):
    results, preds = run_and_load("pf-pascal", fx.root, tmp_path / "out")
    metrics = results["methods"]["dsift"]["metrics"]
    assert results["dataset"]["protocol"]["standard_norm"] == "img"
    by_pair = {(Path(p["source"]).stem, Path(p["target"]).stem): p for p in preds}
    assert len(by_pair) == len(fx.rows["test"])
    d, L_img, L_box = [], [], []
    for a, b, _, _, mutual in fx.rows["test"]:
        gt = fx.images[b].kps[mutual]
        pred = np.asarray(by_pair[(a, b)]["predicted_points"], dtype=np.float64)
        W, H = fx.images[b].size
        l, t, r, bt = fx.images[b].bbox
        for k in range(len(gt)):
            d.append(float(np.hypot(pred[k, 0] - gt[k, 0], pred[k, 1] - gt[k, 1])))
            L_img.append(float(max(W, H)))  # PF-PASCAL's standard: the target image's long side
            L_box.append(max(r - l, bt - t))
    lo, hi = pck_bounds(d, L_img)
    assert lo - 1e-9 <= metrics["pck@0.10_img"] <= hi + 1e-9
    order = [by_pair[(a, b)]["pair"] for a, b, *_ in fx.rows["test"]]
    run_d, run_L = run_values(preds, order, "img")  # the run scored the same points against the same lengths
    np.testing.assert_allclose(run_d, d, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(run_L, L_img)
    lo, hi = pck_bounds(d, L_box)
    assert lo - 1e-9 <= metrics["pck@0.10_bbox"] <= hi + 1e-9


def test_download_verify_info_against_a_loopback_server(fx, tmp_path, monkeypatch):
    from corrbench.cli import build_cli

    # the published zip has no pair lists: they come from the CNNGeometric and NCNet pages
    bare = tmp_path / "bare"
    shutil.copytree(fx.root, bare, ignore=shutil.ignore_patterns("*.csv"))
    archive = zip_folder(bare, "PF-dataset-PASCAL")
    files = {"/PF-dataset-PASCAL.zip": archive,
             "/csv/test_pairs_pf_pascal.csv": (fx.root / "test_pairs_pf_pascal.csv").read_bytes(),
             "/csv/val_pairs_pf_pascal.csv": (fx.root / "val_pairs_pf_pascal.csv").read_bytes(),
             "/ncnet/train_pairs.csv": (fx.root / "train_pairs_pf_pascal.csv").read_bytes()}
    root = tmp_path / "data" / "PF-dataset-PASCAL"
    with LoopbackServer(files) as srv:
        monkeypatch.setenv("CORRBENCH_PF_PASCAL_URL", f"{srv.url}/PF-dataset-PASCAL.zip")
        monkeypatch.setenv("CORRBENCH_PF_PASCAL_CSV_URL", f"{srv.url}/csv")
        monkeypatch.setenv("CORRBENCH_PF_PASCAL_TRAIN_CSV_URL", f"{srv.url}/ncnet/train_pairs.csv")
        res = CliRunner().invoke(build_cli(), ["data", "download", "pf-pascal", "--root", str(root), "--no-progress"])
        assert res.exit_code == 0, res.output + repr(res.exception)
    assert "installed" in res.output
    for name in ("test_pairs_pf_pascal.csv", "val_pairs_pf_pascal.csv", "train_pairs_pf_pascal.csv"):
        assert (root / name).read_bytes() == (fx.root / name).read_bytes()
    res = CliRunner().invoke(build_cli(), ["data", "verify", "pf-pascal", "--root", str(root)])
    assert res.exit_code == 0 and "pf-pascal: ok" in res.output, res.output
    assert "published count 299" in res.output  # the fixture is small: noted, not an error
    res = CliRunner().invoke(build_cli(), ["data", "info", "pf-pascal", "--root", str(root), "--json"])
    assert res.exit_code == 0 and '"test": 8' in res.output and "unverified" in res.output


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=120),
                 st.lists(st.sampled_from(["source_image,target_image,class,XA,YA,XB,YB",
                                           "source_image,target_image,class,flip", "a.jpg,b.jpg,8,1;2,3;4,5;6,7;8",
                                           "a.jpg,b.jpg,99,1,1,1,1", "a.jpg,b.jpg,8,1", ",,,", "\"unterminated",
                                           "a.jpg,b.jpg,8,nan,1,1,1", "/x.jpg,b.jpg,8,1,1,1,1"]),
                          max_size=4).map(lambda ls: "\n".join(ls).encode())))
def test_pair_list_bytes_raise_only_data_errors_naming_a_file(tmp_path_factory, raw):
    root = tmp_path_factory.mktemp("prop") / "PF-dataset-PASCAL"
    root.mkdir()
    (root / "test_pairs_pf_pascal.csv").write_bytes(raw)
    try:
        list(PFPascalDataset(root=root).pairs())
    except DataError as exc:
        assert "test_pairs_pf_pascal.csv" in str(exc)
