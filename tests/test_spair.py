"""SPair-71k reader and dataset, on fixtures written at test time in the exact SPair layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corrbench.errors import DataError, MissingDataError
from corrbench.testing.datasets import write_spair_fixture
from corrbench_datasets.spair import iter_spair_pairs, parse_pair_annotation, read_layout, stem_category


@pytest.fixture(scope="module")
def spair_fx(tmp_path_factory):
    return write_spair_fixture(tmp_path_factory.mktemp("spair") / "SPair-71k")


def _raise(msg, exc):
    raise DataError(msg) from exc


# ------------------------------------------------------------------------------------------
# iter_spair_pairs
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["trn", "val", "test"])
def test_reader_returns_every_listed_pair_with_its_annotation(spair_fx, split):
    pairs = list(iter_spair_pairs(spair_fx.root, split, invalid=_raise))
    expected = spair_fx.pairs[split]
    assert [p.id for p in pairs] == [stem for stem, _ in expected]
    for pair, (stem, obj) in zip(pairs, expected):
        cat = obj["category"]
        assert pair.category == cat == stem_category(stem)
        assert pair.source == spair_fx.root / "JPEGImages" / cat / obj["src_imname"]
        assert pair.target == spair_fx.root / "JPEGImages" / cat / obj["trg_imname"]
        assert pair.source.is_file() and pair.target.is_file()
        # points stay (x, y): compare with the image records the fixture drew the discs from
        src_rec = spair_fx.images[(cat, obj["src_imname"])]
        trg_rec = spair_fx.images[(cat, obj["trg_imname"])]
        ids = [int(k) for k in obj["kps_ids"]]
        np.testing.assert_array_equal(pair.source_points, [src_rec.kps[k] for k in ids])
        np.testing.assert_array_equal(pair.target_points, [trg_rec.kps[k] for k in ids])
        assert pair.source_size == src_rec.size and pair.target_size == trg_rec.size  # (W, H)
        assert pair.source_box == tuple(src_rec.bbox) and pair.target_box == tuple(trg_rec.bbox)
        assert pair.metadata == {
            "viewpoint_variation": obj["viewpoint_variation"], "scale_variation": obj["scale_variation"],
            "truncation": obj["truncation"], "occlusion": obj["occlusion"], "mirror": 0,
            "keypoint_ids": ids, "source_pose": obj["src_pose"], "target_pose": obj["trg_pose"],
        }
        assert pair.problems() == []


def test_fixture_has_border_keypoints_nonsquare_images_and_disjoint_splits(spair_fx):
    recs = list(spair_fx.images.values())
    assert all(r.size[0] != r.size[1] for r in recs)
    assert any(x == r.size[0] - 1 for r in recs for x, _ in r.kps.values())
    assert any(r.bbox[2] == r.size[0] for r in recs)
    by_split = {s: {(r.category, r.name) for r in recs if r.split == s} for s in ("trn", "val", "test")}
    assert not (by_split["trn"] & by_split["test"]) and not (by_split["val"] & by_split["test"])
    # the image sizes on disk are the (W, H) written in the annotations
    from PIL import Image

    for r in recs:
        with Image.open(spair_fx.root / "JPEGImages" / r.category / r.name) as im:
            assert im.size == r.size


def test_layout_file_ends_with_newline_and_stems_parse(spair_fx):
    text = (spair_fx.root / "Layout" / "large" / "test.txt").read_text()
    assert text.endswith("\n")
    assert read_layout(spair_fx.root, "test") == [s for s, _ in spair_fx.pairs["test"]]
    assert stem_category("000250-2008_008607-2009_002388:aeroplane") == "aeroplane"
    assert stem_category("no-category") is None


def test_category_filter_reads_only_matching_pairs(spair_fx):
    pairs = list(iter_spair_pairs(spair_fx.root, "test", categories=["bus"], invalid=_raise))
    assert pairs and {p.category for p in pairs} == {"bus"}
    assert len(pairs) == sum(1 for _, o in spair_fx.pairs["test"] if o["category"] == "bus")


def test_small_layout_is_read(spair_fx):
    pairs = list(iter_spair_pairs(spair_fx.root, "val", layout="small", invalid=_raise))
    assert [p.id for p in pairs] == [s for s, _ in spair_fx.pairs["val"]]


def test_missing_layout_raises_missing_data(tmp_path):
    with pytest.raises(MissingDataError, match=r"Layout/large/test.txt"):
        list(iter_spair_pairs(tmp_path, "test", invalid=_raise))


def test_malformed_and_missing_pair_files_are_reported_and_reading_continues(tmp_path):
    fx = write_spair_fixture(tmp_path / "SPair-71k", categories=("cat",))
    stems = [s for s, _ in fx.pairs["test"]]
    (fx.root / "PairAnnotation" / "test" / f"{stems[0]}.json").write_text("{not json")
    (fx.root / "PairAnnotation" / "test" / f"{stems[1]}.json").unlink()
    bad = json.loads((fx.root / "PairAnnotation" / "test" / f"{stems[2]}.json").read_text())
    bad["src_kps"][0] = [1, 2, 3]
    (fx.root / "PairAnnotation" / "test" / f"{stems[2]}.json").write_text(json.dumps(bad))
    seen: list[tuple[str, BaseException | None]] = []
    pairs = list(iter_spair_pairs(fx.root, "test", invalid=lambda m, e: seen.append((m, e))))
    assert [p.id for p in pairs] == stems[3:]
    assert len(seen) == 3
    assert f"{stems[0]}.json: malformed JSON" in seen[0][0]
    assert f"{stems[1]}.json: file is missing" in seen[1][0]
    assert f"{stems[2]}.json: src_kps[0] must be an [x, y] pair" in seen[2][0]
    assert all(isinstance(e, DataError) for _, e in seen)
    # without a skip policy the first problem is an error naming the file
    with pytest.raises(DataError, match="malformed JSON"):
        list(iter_spair_pairs(fx.root, "test", invalid=_raise))


def test_keypoint_count_problems_are_left_to_pair_problems(tmp_path):
    fx = write_spair_fixture(tmp_path / "SPair-71k", categories=("cat",), images_per_split={"test": 2})
    stem, obj = fx.pairs["test"][0]
    obj = dict(obj, trg_kps=obj["trg_kps"][:-1], kps_ids=obj["kps_ids"])
    obj.pop("kps_ids")
    (fx.root / "PairAnnotation" / "test" / f"{stem}.json").write_text(json.dumps(obj))
    stem2, obj2 = fx.pairs["test"][1]
    (fx.root / "PairAnnotation" / "test" / f"{stem2}.json").write_text(
        json.dumps(dict(obj2, src_kps=[], trg_kps=[], kps_ids=[])))
    seen = []
    pairs = list(iter_spair_pairs(fx.root, "test", invalid=lambda m, e: seen.append(m)))
    assert "source keypoints but" in pairs[0].problems()[0]
    assert seen == [f"{fx.root / 'PairAnnotation' / 'test' / stem2}.json: no keypoints (empty src_kps and trg_kps)"]


def test_kps_ids_length_mismatch_is_a_data_error(tmp_path):
    fx = write_spair_fixture(tmp_path / "SPair-71k", categories=("cat",), images_per_split={"test": 2})
    stem, obj = fx.pairs["test"][0]
    path = fx.root / "PairAnnotation" / "test" / f"{stem}.json"
    path.write_text(json.dumps(dict(obj, kps_ids=obj["kps_ids"] + ["29"])))
    with pytest.raises(DataError, match=r"kps_ids has \d+ entries"):
        list(iter_spair_pairs(fx.root, "test", invalid=_raise))


def test_category_mismatch_between_stem_and_json_is_reported(tmp_path):
    fx = write_spair_fixture(tmp_path / "SPair-71k", categories=("cat",), images_per_split={"test": 2})
    stem, obj = fx.pairs["test"][0]
    (fx.root / "PairAnnotation" / "test" / f"{stem}.json").write_text(json.dumps(dict(obj, category="dog")))
    with pytest.raises(DataError, match="does not match the file name"):
        list(iter_spair_pairs(fx.root, "test", invalid=_raise))


# ------------------------------------------------------------------------------------------
# Property: malformed pair JSON → DataError naming the file, never another exception
# ------------------------------------------------------------------------------------------
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                       st.text(max_size=5))
_json = st.recursive(_json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)
_keys = ["pair_id", "src_imname", "trg_imname", "src_imsize", "trg_imsize", "src_bndbox", "trg_bndbox",
         "src_pose", "trg_pose", "category", "src_kps", "trg_kps", "kps_ids", "mirror",
         "viewpoint_variation", "scale_variation", "truncation", "occlusion"]
_VALID = {"pair_id": 1, "src_imname": "a.jpg", "trg_imname": "b.jpg", "src_imsize": [64, 48, 3],
          "trg_imsize": [40, 72, 3], "src_bndbox": [0, 0, 64, 48], "trg_bndbox": [1, 2, 30, 70],
          "src_pose": "Left", "trg_pose": "Right", "category": "cat", "src_kps": [[1, 2], [63, 4]],
          "trg_kps": [[3, 4], [5, 6]], "kps_ids": ["0", "3"], "mirror": 0, "viewpoint_variation": 1,
          "scale_variation": 0, "truncation": 2, "occlusion": 3}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    _json,
    st.dictionaries(st.sampled_from(_keys), _json, max_size=18),
    st.builds(lambda k, v: {**_VALID, k: v}, st.sampled_from(_keys), _json),
))
def test_pair_parser_raises_only_data_errors_naming_the_file(data):
    path = Path("/data/PairAnnotation/test/000001-a-b:cat.json")
    try:
        pair = parse_pair_annotation(data, path, Path("/data/JPEGImages"), "000001-a-b:cat", "cat")
    except DataError as exc:
        assert str(path) in str(exc)
    else:
        assert pair.category == "cat"
        assert pair.source_points.shape[1] == 2 and np.isfinite(pair.source_points).all()
        pair.problems()  # must not raise either


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64))
def test_pair_file_bytes_raise_only_data_errors(tmp_path_factory, raw):
    root = tmp_path_factory.mktemp("prop")
    (root / "Layout" / "large").mkdir(parents=True)
    (root / "Layout" / "large" / "test.txt").write_text("000001-a-b:cat\n")
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    (root / "PairAnnotation" / "test" / "000001-a-b:cat.json").write_bytes(raw)
    try:
        list(iter_spair_pairs(root, "test", invalid=_raise))
    except DataError as exc:
        assert "000001-a-b:cat.json" in str(exc)
