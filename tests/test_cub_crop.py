"""CUB-200-2011 with ``cub.crop=bbox``: the ACSM-style 256 × 256 crop (docs/datasets.md#cub-crops).

Rule under test: each side of the box moves out by 5 % of the box's width (height); the square's side is
the larger padded side rounded up to a whole pixel, centred on the box centre (origin rounded half up to
a whole pixel); pixels outside the image repeat the edge pixel; resized to 256 with bilinear; a point
p becomes (p − origin) · 256 / side; keypoints outside [0, 256) in either image leave the pair.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corrbench.errors import DataError, UsageError
from corrbench.testing import invoke_cli
from corrbench.testing.datasets import write_cub_fixture
from corrbench_datasets import cub as cubmod
from corrbench_datasets.cub import CUBDataset, make_pair_list, read_cub

# Hand-set annotations for two test images of class 1 (image 1 is 40 × 72, image 3 is 48 × 60):
#   image 1: box x y w h = 22 0 18 50 → l t r b = 22 0 40 50, ending on the right border and starting on the
#            top one, taller than wide. Padded: 19.8 × 55 → side 55 (50 · 1.1 is 55.00000000000001 in floating
#            point: still 55); centre (31, 25) → origin (31 − 27.5 + 0.5, 25 − 27.5 + 0.5) = (4, −2), so the
#            square covers x 4..58 (19 columns right of the image) and y −2..52 (2 rows above it).
#   image 3: box 5 10 30 20 → 5 10 35 30, wider than tall. Padded 33 × 22 → side 33; centre (20, 20) →
#            origin (4, 4).
BOX1, BOX3 = (22.0, 0.0, 18.0, 50.0), (5.0, 10.0, 30.0, 20.0)
CROP1, CROP3 = (4, -2, 55), (4, 4, 33)
PARTS1 = {1: (30.0, 10.0), 2: (39.0, 29.0), 3: (5.0, 60.0), 4: (25.0, 20.0)}  # part 3 lies below the square
PARTS3 = {1: (10.0, 15.0), 2: (34.0, 29.0), 3: (20.0, 20.0), 4: (6.0, 11.0)}


@pytest.fixture(scope="module")
def cub_fx(tmp_path_factory):
    fx = write_cub_fixture(tmp_path_factory.mktemp("cubcrop") / "CUB_200_2011", classes=3, train_per_class=2,
                           test_per_class=4)
    assert fx.images[1].size == (40, 72) and fx.images[3].size == (48, 60)
    assert not fx.images[1].train and not fx.images[3].train and fx.images[1].class_id == fx.images[3].class_id
    root = fx.root
    boxes = {1: BOX1, 3: BOX3}
    lines = []
    for ln in (root / "bounding_boxes.txt").read_text().splitlines():
        i = int(ln.split()[0])
        lines.append(f"{i} " + " ".join(f"{v:.1f}" for v in boxes[i]) if i in boxes else ln)
    (root / "bounding_boxes.txt").write_text("\n".join(lines) + "\n")
    parts = {1: PARTS1, 3: PARTS3}
    out = []
    for ln in (root / "parts" / "part_locs.txt").read_text().splitlines():
        i, p = map(int, ln.split()[:2])
        if i in parts:
            x, y = parts[i].get(p, (0.0, 0.0))
            ln = f"{i} {p} {x:.1f} {y:.1f} {int(p in parts[i])}"
        out.append(ln)
    (root / "parts" / "part_locs.txt").write_text("\n".join(out) + "\n")
    return fx


@pytest.fixture
def cub_copy(cub_fx, tmp_path):
    dst = tmp_path / "CUB_200_2011"
    shutil.copytree(cub_fx.root, dst, ignore=shutil.ignore_patterns(".corrbench"))
    return dst


def _ref_crop(l, t, r, b):
    """The rule in plain arithmetic (independent of the module's helpers)."""
    w, h = r - l, b - t
    side = math.ceil(round(max(w * 1.1, h * 1.1), 6))
    return math.floor((l + r) / 2 - side / 2 + 0.5), math.floor((t + b) / 2 - side / 2 + 0.5), side


def _ref_point(x, y, crop):
    x0, y0, side = crop
    return (x - x0) * 256 / side, (y - y0) * 256 / side


def _image_id(path: Path) -> int:
    """Cropped PNG path → CUB image id (the fixture's file names end in _<id>)."""
    return int(path.stem.rsplit("_", 1)[1])


def _files(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------
def test_reference_keypoints_border_and_non_square_boxes(cub_copy):
    ds = CUBDataset(root=cub_copy, config={"crop": "bbox"})  # 360 > all candidates: every pair is listed
    pairs = list(ds.pairs())
    ann = read_cub(cub_copy)
    # the hand-computed windows agree with the plain-arithmetic rule
    assert _ref_crop(*ann.boxes[1]) == CROP1 and _ref_crop(*ann.boxes[3]) == CROP3
    s1, s3 = 256 / 55, 256 / 33
    # hand-computed, image 1 → image 3: part 3 (y 60 − (−2) = 62 > 55) is below image 1's square: it leaves
    p13 = next(p for p in pairs if (_image_id(p.source), _image_id(p.target)) == (1, 3))
    assert p13.metadata["keypoint_ids"] == [1, 2, 4]
    np.testing.assert_allclose(p13.source_points, np.array([[26, 12], [35, 31], [21, 22]]) * s1, atol=1e-9)
    np.testing.assert_allclose(p13.target_points, np.array([[6, 11], [30, 25], [2, 7]]) * s3, atol=1e-9)
    np.testing.assert_allclose(p13.target_box, np.array([1, 6, 31, 26]) * s3, atol=1e-9)
    np.testing.assert_allclose(p13.source_box, np.array([18, 2, 36, 52]) * s1, atol=1e-9)
    assert p13.source_size == p13.target_size == (256, 256)
    # every pair, from the annotations and the plain rule
    n_checked = 0
    for pair in pairs:
        a, b = _image_id(pair.source), _image_id(pair.target)
        ca, cb = _ref_crop(*ann.boxes[a]), _ref_crop(*ann.boxes[b])
        mutual = sorted(p for p in ann.parts[a] if ann.parts[a][p][2] and ann.parts[b][p][2])
        exp_s, exp_t, ids = [], [], []
        for p in mutual:
            sx, sy = _ref_point(*ann.parts[a][p][:2], ca)
            tx, ty = _ref_point(*ann.parts[b][p][:2], cb)
            if all(0 <= v < 256 for v in (sx, sy, tx, ty)):
                exp_s.append((sx, sy)), exp_t.append((tx, ty)), ids.append(p)
        assert pair.metadata["keypoint_ids"] == ids
        np.testing.assert_allclose(pair.source_points, exp_s, atol=1e-9)
        np.testing.assert_allclose(pair.target_points, exp_t, atol=1e-9)
        l, t, r, bb = ann.boxes[b]
        exp_box = (*_ref_point(l, t, cb), *_ref_point(r, bb, cb))
        np.testing.assert_allclose(pair.target_box, exp_box, atol=1e-9)
        assert pair.problems() == []
        n_checked += 1
    assert n_checked == len(pairs) > 20
    proto = ds.protocol()
    assert proto["crop"] == "bbox" and proto["crop_dropped_keypoints"] >= 2  # part 3 of image 1, both directions
    assert "padded 5 %, squared, edge-padded, resized to 256" in proto["crop_rule"]


def test_cropped_pixels_sit_where_the_transformed_coordinates_say(cub_copy):
    W, H = 40, 72
    arr = np.zeros((H, W, 3), np.uint8)
    arr[0, :, 1] = 255  # top row green (edge-padded above the image)
    arr[:, W - 1] = (255, 0, 0)  # right column red (edge-padded right of the image)
    arr[10, 30] = 255  # one white pixel: continuous centre (30.5, 10.5)
    path = cub_copy / "images" / read_cub(cub_copy).images[1]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # lossless bytes under the .jpg name: PIL reads by content
    path.write_bytes(buf.getvalue())
    ds = CUBDataset(root=cub_copy, config={"crop": "bbox", "num_pairs": 360})
    pair = next(p for p in ds.pairs() if _image_id(p.source) == 1)
    with Image.open(pair.source) as im:
        assert im.size == (256, 256) and im.format == "PNG"
        out = np.asarray(im.convert("RGB")).astype(float)
    ex, ey = _ref_point(30.5, 10.5, CROP1)  # (123.35, 58.18)
    white = out.min(axis=2)  # only the white dot is bright in all three channels
    white[:, 185:] = 0
    iy, ix = np.unravel_index(np.argmax(white), white.shape)
    assert abs(ix + 0.5 - ex) <= 1 and abs(iy + 0.5 - ey) <= 1
    ys, xs = np.nonzero(white > 0)
    wts = white[ys, xs]
    assert abs(np.average(xs + 0.5, weights=wts) - ex) < 0.5 and abs(np.average(ys + 0.5, weights=wts) - ey) < 0.5
    # edge padding: columns right of x = 40 (from 36 · 256/55 ≈ 168) repeat the red column
    assert (out[:, 200:] == (255, 0, 0)).all()
    # the rows above the image repeat the green top row: output rows 0..7 come from image rows −2..0 only
    assert (out[0:8, 0:150] == (0, 255, 0)).all()
    assert (out[20:60, 0:100] == 0).all()  # and nothing else leaked in


# ------------------------------------------------------------------------------------------
# Files: written once, verified, regenerated when missing or corrupt
# ------------------------------------------------------------------------------------------
def test_crops_are_written_once_and_regenerated_when_missing_or_corrupt(cub_copy, monkeypatch):
    ds = CUBDataset(root=cub_copy, config={"crop": "bbox", "num_pairs": 10})
    first = [(p.id, p.source, p.target, p.source_points.tolist()) for p in ds.pairs()]
    folder = cub_copy / ".corrbench" / "cub" / "cub_pairs_test_seed0_n10_v1.crop-bbox-v1"
    assert ds.protocol()["cropped_pair_list"] == str(folder / "pairs.json")
    files = _files(folder)
    pngs = sorted(p for p in files if p.suffix == ".png")
    used = {p for _, s, t, _ in first for p in (s, t)}
    assert set(pngs) == used and all(p.is_relative_to(folder / "images") for p in used)
    manifest = json.loads((folder / "crop.json").read_text())
    assert manifest["pair_list_sha256"] == hashlib.sha256(
        (cub_copy / ".corrbench" / "cub" / "cub_pairs_test_seed0_n10_v1.json").read_bytes()).hexdigest()
    assert manifest["pairs_sha256"] == hashlib.sha256((folder / "pairs.json").read_bytes()).hexdigest()
    assert not list(folder.rglob("*.tmp")) and not list(folder.rglob(".*.tmp*"))

    # a second construction reads and verifies, and writes nothing
    def no_crop(*a, **k):
        raise AssertionError("an image was cropped again")

    with monkeypatch.context() as m:
        m.setattr(cubmod, "crop_image", no_crop)
        again = CUBDataset(root=cub_copy, config={"crop": "bbox", "num_pairs": 10})
        assert [(p.id, p.source, p.target, p.source_points.tolist()) for p in again.pairs()] == first
    assert _files(folder) == files

    # a deleted crop is made again, byte-identical; the others are left alone
    victim = pngs[0]
    original = victim.read_bytes()
    victim.unlink()
    list(CUBDataset(root=cub_copy, config={"crop": "bbox", "num_pairs": 10}).pairs())
    assert victim.read_bytes() == original
    assert {p: t for p, t in _files(folder).items() if p != victim} == {p: t for p, t in files.items() if p != victim}

    # a corrupt crop (same size, other bytes) is never used: it is regenerated
    good = pngs[1].read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    pngs[1].write_bytes(bytes(bad))
    list(CUBDataset(root=cub_copy, config={"crop": "bbox", "num_pairs": 10}).pairs())
    assert pngs[1].read_bytes() == good

    # an edited source image is cropped again
    src = cub_copy / "images" / read_cub(cub_copy).images[_image_id(pngs[2])]
    with Image.open(src) as im:
        Image.new("RGB", im.size, (1, 2, 3)).save(src, format="JPEG")
    os.utime(src, ns=(1, 1))
    list(CUBDataset(root=cub_copy, config={"crop": "bbox", "num_pairs": 10}).pairs())
    with Image.open(pngs[2]) as im:
        assert np.asarray(im)[128, 128].tolist() == pytest.approx([1, 2, 3], abs=2)

    # a deleted cropped list is written again, identical
    pairs_bytes = (folder / "pairs.json").read_bytes()
    (folder / "pairs.json").unlink()
    list(CUBDataset(root=cub_copy, config={"crop": "bbox", "num_pairs": 10}).pairs())
    assert (folder / "pairs.json").read_bytes() == pairs_bytes


def test_missing_source_image_is_an_error_or_a_counted_skip(cub_copy):
    ds = CUBDataset(root=cub_copy, config={"crop": "bbox", "num_pairs": 10})
    used = {p.source for p in ds.pairs()}
    victim = sorted(used)[0]
    original = cub_copy / "images" / read_cub(cub_copy).images[_image_id(victim)]
    original.unlink()
    with pytest.raises(DataError, match=rf"image {original} is missing"):
        list(CUBDataset(root=cub_copy, config={"crop": "bbox", "num_pairs": 10}).pairs())
    skipping = CUBDataset(root=cub_copy, config={"crop": "bbox", "num_pairs": 10}, skip_invalid=True)
    with pytest.warns(UserWarning, match="is missing"):
        kept = list(skipping.pairs())
    assert len(kept) + len(skipping.skipped) == 10 and skipping.skipped
    assert all(original.name not in str(p.source) + str(p.target) for p in kept)
    assert all(s.startswith("pair ") for s in skipping.skipped)


def test_read_only_dataset_folder_puts_the_crops_in_the_user_cache(cub_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("CORRBENCH_CACHE", str(tmp_path / "cache"))
    (cub_copy / ".corrbench").write_text("not a folder")
    pairs = list(CUBDataset(root=cub_copy, config={"crop": "bbox", "num_pairs": 4}).pairs())
    assert len(pairs) == 4
    assert pairs[0].source.is_relative_to(tmp_path / "cache" / "annotations" / "cub")


# ------------------------------------------------------------------------------------------
# A user's list (cub.pairs=FILE) with the crop
# ------------------------------------------------------------------------------------------
def test_custom_list_is_cropped_too(cub_copy, tmp_path):
    entries, _ = make_pair_list(read_cub(cub_copy), num_pairs=4, seed=1)
    entries[1] = dict(entries[1])
    del entries[1]["source_bounding_box"]  # optional in the DHF schema, but the crop needs it
    entries[2] = dict(entries[2], source_points=[[-500.0, -500.0]] * len(entries[2]["source_points"]))
    custom = tmp_path / "mine.json"
    custom.write_text(json.dumps(entries))
    with pytest.raises(DataError, match=r"mine.json: entry 1: cub.crop=bbox needs a source_bounding_box"):
        list(CUBDataset(root=cub_copy, config={"pairs": str(custom), "crop": "bbox"}).pairs())
    ds = CUBDataset(root=cub_copy, config={"pairs": str(custom), "crop": "bbox"}, skip_invalid=True)
    with pytest.warns(UserWarning, match="skipping"):
        pairs = list(ds.pairs())
    assert len(pairs) == 2 and len(ds.skipped) == 1  # entry 2 has no keypoint inside the crop: dropped by rule
    proto = ds.protocol()
    assert proto["crop"] == "bbox" and proto["pair_list"] == str(custom) and proto["crop_dropped_pairs"] == 1
    sha12 = hashlib.sha256(custom.read_bytes()).hexdigest()[:12]
    assert Path(proto["cropped_pair_list"]).parent.name == f"mine-{sha12}.crop-bbox-v1"
    assert all(p.source.suffix == ".png" and p.source_size == (256, 256) for p in pairs)


# ------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------
def test_run_dsift_with_the_crop_end_to_end(cub_copy, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = invoke_cli(["run", "--methods", "dsift", "--dataset", "cub", "--data-root", str(cub_copy),
                                    "--set", "cub.crop=bbox", "--set", "cub.num_pairs=6", "--out", str(out),
                                    "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    ds = results["dataset"]
    assert ds["n_pairs"] == 6 and ds["skipped"] == []
    assert ds["protocol"]["crop"] == "bbox" and "resized to 256" in ds["protocol"]["crop_rule"]
    assert ds["protocol"]["cropped_pair_list_sha256"]
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert preds and all(p["L_img"] == 256 for p in preds)
    ann = read_cub(cub_copy)
    for p in preds:
        trg = _image_id(Path(p["target"]))
        assert Path(p["target"]).suffix == ".png"
        l, t, r, b = ann.boxes[trg]
        assert p["L_bbox"] == pytest.approx(max(r - l, b - t) * 256 / _ref_crop(l, t, r, b)[2])


@pytest.mark.parametrize("value", ["square", "1"])
def test_unknown_crop_is_a_one_line_usage_error(cub_copy, tmp_path, value):
    code, _, err = invoke_cli(["run", "--methods", "dsift", "--dataset", "cub", "--data-root", str(cub_copy),
                               "--set", f"cub.crop={value}", "--out", str(tmp_path / "out")])
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert f"cub.crop={value!r}" in lines[0] or f"cub.crop={int(value)!r}" in lines[0]
    assert "'none'" in lines[0] and "'bbox'" in lines[0]
    with pytest.raises(UsageError, match=r"cub.crop='square': expected one of 'none', 'bbox'"):
        CUBDataset(root=cub_copy, config={"crop": "square"})
