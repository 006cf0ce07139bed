"""DHF-schema pair lists: the reader, the ``dhf-json`` dataset and an end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corrbench.errors import DataError, UsageError
from corrbench.testing.datasets import dhf_list_from_spair, spair_pair_to_dhf, write_json, write_spair_fixture
from corrbench_datasets.dhf_json import DhfJsonDataset, iter_dhf_pairs, parse_dhf_entry


@pytest.fixture(scope="module")
def spair_fx(tmp_path_factory):
    return write_spair_fixture(tmp_path_factory.mktemp("dhf") / "SPair-71k")


def _raise(msg, exc):
    raise DataError(msg) from exc


def test_reader_maps_the_schema_to_pairs(spair_fx, tmp_path):
    entries = dhf_list_from_spair(spair_fx, "test", per_category=20)
    path = tmp_path / "list.json"
    write_json(path, entries)
    images = spair_fx.root / "JPEGImages"
    pairs = list(iter_dhf_pairs(path, images, invalid=_raise))
    assert len(pairs) == len(entries) == len(spair_fx.pairs["test"])  # fewer than 20 per category exist
    for i, (pair, e) in enumerate(zip(pairs, entries)):
        assert pair.source == images / e["source_path"] and pair.target == images / e["target_path"]
        np.testing.assert_array_equal(pair.source_points, e["source_points"])  # (x, y) kept
        np.testing.assert_array_equal(pair.target_points, e["target_points"])
        assert pair.target_box == tuple(e["target_bounding_box"])
        assert pair.source_box == tuple(e["source_bounding_box"])
        assert pair.category == e["category"]
        assert pair.id.startswith(f"{i:06d}-") and pair.id.endswith(f":{e['category']}")
        assert pair.source.is_file()
    # categories come in contiguous blocks, as in the published lists
    cats = [e["category"] for e in entries]
    assert sum(1 for a, b in zip(cats, cats[1:]) if a != b) == len(set(cats)) - 1


def test_test6_style_bare_names_and_extra_keys(spair_fx, tmp_path):
    stem, obj = spair_fx.pairs["test"][0]
    e = spair_pair_to_dhf(obj, style="test-6")
    assert "/" not in e["source_path"]
    pair = parse_dhf_entry(e, 0, tmp_path / "t6.json", spair_fx.root / "JPEGImages" / obj["category"])
    assert pair.metadata == {"mirror": 0, "viewpoint_variation": obj["viewpoint_variation"],
                             "source_pose": obj["src_pose"], "target_pose": obj["trg_pose"]}
    assert pair.category == obj["category"] and pair.source.is_file()


def test_category_defaults_to_the_path_folder(tmp_path):
    e = {"source_path": "dog/a.jpg", "target_path": "dog/b.jpg", "source_points": [[1, 2]],
         "target_points": [[3, 4]], "target_bounding_box": [0, 0, 10, 10]}
    assert parse_dhf_entry(e, 3, tmp_path / "x.json", tmp_path).category == "dog"


@pytest.mark.parametrize("change, message", [
    ({"source_points": [[1, 2, 3]]}, r"entry 0: source_points\[0\] must be an \[x, y\] pair"),
    ({"target_points": "no"}, r"entry 0: target_points must be a list"),
    ({"target_bounding_box": [10, 0, 5, 10]}, r"entry 0: target_bounding_box .* is empty or inverted"),
    ({"target_bounding_box": None}, r"entry 0: target_bounding_box must be \[left, top, right, bottom\]"),
    ({"source_path": ""}, r"entry 0: source_path must be a non-empty string"),
    ({"source_points": [[1, "x"]]}, r"entry 0: source_points\[0\]\[1\] must be a number"),
    ({"mirror": "yes"}, r"entry 0: mirror must be an integer"),
])
def test_malformed_entries_name_the_file_and_entry(tmp_path, change, message):
    e = {"source_path": "cat/a.jpg", "target_path": "cat/b.jpg", "source_points": [[1, 2]],
         "target_points": [[3, 4]], "category": "cat", "target_bounding_box": [0, 0, 10, 10],
         "source_bounding_box": [0, 0, 10, 10], **change}
    with pytest.raises(DataError, match=r"list.json: " + message):
        parse_dhf_entry(e, 0, tmp_path / "list.json", tmp_path)


def test_whole_file_problems(tmp_path):
    (tmp_path / "obj.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match=r"obj.json: a DHF pair list must be a JSON array"):
        list(iter_dhf_pairs(tmp_path / "obj.json", tmp_path, invalid=_raise))
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(DataError, match=r"bad.json: malformed JSON"):
        list(iter_dhf_pairs(tmp_path / "bad.json", tmp_path, invalid=_raise))


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["source_path", "target_path", "source_points", "target_points", "category",
                                         "source_bounding_box", "target_bounding_box", "mirror", "keypoint_ids"]),
                        c, max_size=9), max_leaves=15))
def test_entry_parser_raises_only_data_errors(entry):
    try:
        parse_dhf_entry(entry, 5, Path("/x/list.json"), Path("/x"))
    except DataError as exc:
        assert "/x/list.json: entry 5" in str(exc)


# ------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------
def test_dataset_needs_a_pair_list(tmp_path):
    ds = DhfJsonDataset(root=tmp_path)
    with pytest.raises(UsageError, match=r"--set dhf-json.pairs=FILE"):
        list(ds.pairs())
    ds = DhfJsonDataset(root=tmp_path, config={"pairs": str(tmp_path / "missing.json")})
    with pytest.raises(DataError, match=r"missing.json: pair list does not exist"):
        list(ds.pairs())


def test_dataset_root_defaults_to_the_list_folder_and_filters_categories(spair_fx, tmp_path):
    entries = dhf_list_from_spair(spair_fx, "test")
    path = tmp_path / "list.json"
    write_json(path, entries)
    assert DhfJsonDataset(config={"pairs": str(path)}).root == tmp_path
    ds = DhfJsonDataset(root=spair_fx.root / "JPEGImages", config={"pairs": str(path), "categories": "bus"})
    pairs = list(ds.pairs())
    assert pairs and {p.category for p in pairs} == {"bus"}
    proto = ds.protocol()
    assert proto["pair_list"] == str(path) and len(proto["pair_list_sha256"]) == 64
    assert ds.info()["pairs"] == len(entries)


def test_skip_invalid_counts_bad_entries(spair_fx, tmp_path):
    entries = dhf_list_from_spair(spair_fx, "test")
    entries[0]["target_points"] = entries[0]["target_points"][:-1]
    entries[1] = {"oops": True}
    path = tmp_path / "list.json"
    write_json(path, entries)
    ds = DhfJsonDataset(root=spair_fx.root / "JPEGImages", config={"pairs": str(path)}, skip_invalid=True)
    with pytest.warns(UserWarning):
        pairs = list(ds.pairs())
    assert len(pairs) == len(entries) - 2 and len(ds.skipped) == 2
    assert "source keypoints but" in ds.skipped[0] and "entry 1: missing key 'source_path'" in ds.skipped[1]


def test_dhf_json_end_to_end_through_the_cli(spair_fx, tmp_path):
    from click.testing import CliRunner

    from corrbench.cli import build_cli

    path = tmp_path / "list.json"
    write_json(path, dhf_list_from_spair(spair_fx, "test"))
    res = CliRunner().invoke(build_cli(), [
        "run", "--methods", "colour-patch", "--dataset", "dhf-json", "--set", f"dhf-json.pairs={path}",
        "--data-root", str(spair_fx.root / "JPEGImages"), "--out", str(tmp_path / "out"),
        "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    ds = results["dataset"]
    assert ds["n_pairs"] == len(spair_fx.pairs["test"]) and ds["protocol"]["pair_list"] == str(path)
    n_kp = sum(len(o["src_kps"]) for _, o in spair_fx.pairs["test"])
    assert results["methods"]["colour-patch"]["n_keypoints"] == n_kp
