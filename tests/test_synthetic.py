"""The embedded benchmark: deterministic, in the exact SPair-71k layout, and meaningful."""

import hashlib
import json

import pytest

from corrbench.runner import run_benchmark
from corrbench_datasets.spair import iter_spair_pairs
from corrbench_synthetic.generate import CATEGORIES, SPLIT_SIZES, write_dataset


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_seeded(tmp_path):
    write_dataset(tmp_path / "a", seed=0)
    write_dataset(tmp_path / "b", seed=0)
    write_dataset(tmp_path / "c", seed=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_round_trip_through_the_spair_reader(synthetic_dataset):
    root = synthetic_dataset.layout_root
    for sub in ("JPEGImages", "ImageAnnotation", "PairAnnotation", "Layout/large", "Layout/small", "Segmentation", "devkit"):
        assert (root / sub).is_dir(), sub
    pairs = list(iter_spair_pairs(root, "test", invalid=lambda m, e: pytest.fail(m)))
    n = SPLIT_SIZES["test"]
    assert len(pairs) == len(CATEGORIES) * n * (n - 1)
    for pair in pairs[:40]:
        src = json.loads((root / "ImageAnnotation" / pair.category / (pair.source.stem + ".json")).read_text())
        ids = pair.metadata["keypoint_ids"]
        assert [src["kps"][str(i)] for i in ids] == pair.source_points.astype(int).tolist()
        assert pair.source_size == (src["image_width"], src["image_height"])
        assert pair.metadata["viewpoint_variation"] in (0, 1, 2)
        assert not pair.problems()
    # splits use disjoint images
    images = {s: {p.source for p in iter_spair_pairs(root, s, invalid=lambda m, e: None)} for s in ("trn", "val", "test")}
    assert not (images["trn"] & images["test"]) and not (images["val"] & images["test"])


def test_left_right_ids_follow_the_viewpoint(synthetic_dataset):
    root = synthetic_dataset.layout_root
    birds = [json.loads(p.read_text()) for p in sorted((root / "ImageAnnotation" / "bird").glob("*.json"))]
    from corrbench_synthetic.shapes import KEYPOINTS

    beak, left_wing = KEYPOINTS["bird"].index("beak_tip"), KEYPOINTS["bird"].index("left_wing_tip")
    tail = KEYPOINTS["bird"].index("tail_tip")
    poses = {b["pose"] for b in birds}
    assert poses == {"Left", "Right"}  # both facing directions occur
    for b in birds:
        facing_right = b["kps"][str(beak)][0] > b["kps"][str(tail)][0]
        assert (b["pose"] == "Right") == facing_right or abs(b["kps"][str(beak)][0] - b["kps"][str(tail)][0]) < 10
    assert all(b["kps"][str(left_wing)] is not None for b in birds)


@pytest.mark.slow
def test_numbers_mean_something(tmp_path):
    """Dense SIFT clearly beats random features, and PCK falls as viewpoint and scale change grows."""
    res = run_benchmark("dsift,random-conv", "synthetic", out_dir=tmp_path, progress=False)
    s = res.summary
    pick = lambda m: float(s[(s.method == m) & (s.norm == "bbox") & (s.average == "point") & (s.alpha == 0.1)].value.iloc[0])
    assert pick("dsift") > pick("random-conv") + 4
    b = res.breakdown
    b = b[(b.method == "dsift") & (b.norm == "bbox") & (b.average == "point") & (b.alpha == 0.1)]
    vp = b[b.group == "viewpoint_variation"].set_index("level").value
    sc = b[b.group == "scale_variation"].set_index("level").value
    vp.index, sc.index = vp.index.astype(int), sc.index.astype(int)
    assert vp[0] > vp[1] > vp[2]
    assert sc[0] > sc[2]
