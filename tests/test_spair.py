"""SPair-71k reader and dataset, on fixtures written at test time in the exact SPair layout."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corrbench.download import ChecksumError, UnsafeArchiveError
from corrbench.errors import DataError, MissingDataError, UsageError
from corrbench.testing.datasets import LoopbackServer, dhf_list_from_spair, write_spair_fixture
from corrbench_datasets.dhf_lists import DHF_LISTS, DhfList
from corrbench_datasets.spair import (SPairDataset, iter_spair_pairs, parse_pair_annotation, read_layout,
                                      stem_category)


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


# ------------------------------------------------------------------------------------------
# The dataset: standard splits
# ------------------------------------------------------------------------------------------
@pytest.fixture
def spair_copy(spair_fx, tmp_path):
    dst = tmp_path / "SPair-71k"
    shutil.copytree(spair_fx.root, dst)
    return dst


def test_dataset_standard_split_config_and_protocol(spair_fx):
    ds = SPairDataset(root=spair_fx.root, split="val", config={"categories": "cat, bus"})
    assert ds.categories == ("cat", "bus")
    assert [p.id for p in ds.pairs()] == [s for s, _ in spair_fx.pairs["val"]]
    assert ds.protocol()["pair_list"] == "Layout/large/val.txt"
    assert ds.difficulty_flags == ("viewpoint_variation", "scale_variation", "truncation", "occlusion")
    assert SPairDataset(root=spair_fx.root, config={"categories": ["bus"]}).categories == ("bus",)
    with pytest.raises(UsageError, match=r"unknown category 'kitten'; known: aeroplane"):
        SPairDataset(root=spair_fx.root, config={"categories": "cat,kitten"})
    with pytest.raises(UsageError, match="spair.layout='medium': expected one of 'large', 'small'"):
        SPairDataset(root=spair_fx.root, config={"layout": "medium"})
    with pytest.raises(UsageError, match="has no split 'tst'"):
        SPairDataset(root=spair_fx.root, split="tst")
    info = SPairDataset(root=spair_fx.root).info()
    assert info["pairs"] == {s: len(spair_fx.pairs[s]) for s in ("trn", "val", "test")}
    assert "PASCAL VOC" in info["licence"]


def test_default_root_comes_from_corrbench_data(monkeypatch, tmp_path):
    monkeypatch.setenv("CORRBENCH_DATA", str(tmp_path))
    assert SPairDataset().root == tmp_path / "SPair-71k"


def test_verify_layout_names_what_is_missing(spair_copy):
    report = SPairDataset(root=spair_copy).verify_layout()
    assert report["problems"] == [] and report["counts"]["test"] > 0
    assert any("published count 12234" in n for n in report["notes"])
    stem = read_layout(spair_copy, "test")[0]
    (spair_copy / "PairAnnotation" / "test" / f"{stem}.json").unlink()
    (spair_copy / "Layout" / "large" / "val.txt").unlink()
    problems = SPairDataset(root=spair_copy).verify_layout()["problems"]
    assert any(p.endswith("val.txt: pair list is missing") for p in problems)
    assert any(f"1 pair file(s) listed in test.txt are missing: {stem}.json" in p for p in problems)


# ------------------------------------------------------------------------------------------
# DHF 360-pair lists: download, checksum, cache, local copy, metadata join
# ------------------------------------------------------------------------------------------
def _served_list(spair_fx, split="test"):
    data = json.dumps(dhf_list_from_spair(spair_fx, split, per_category=20, seed=1)).encode()
    return data, hashlib.sha256(data).hexdigest()


def _with_sha(monkeypatch, name, sha):
    spec = DHF_LISTS[name]
    monkeypatch.setitem(DHF_LISTS, name, DhfList(spec.filename, sha, spec.spair_split, spec.n_pairs))


def test_dhf_list_is_downloaded_verified_cached_and_joined(spair_copy, spair_fx, monkeypatch):
    data, sha = _served_list(spair_fx)
    _with_sha(monkeypatch, "dhf-test-360", sha)
    with LoopbackServer({"/ann/spair_71k_test-360.json": data}) as srv:
        monkeypatch.setenv("CORRBENCH_DHF_ANNOTATIONS_URL", f"{srv.url}/ann/")
        ds = SPairDataset(root=spair_copy, split="dhf-test-360")
        pairs = list(ds.pairs())
        assert len(srv.requests) == 1
        again = list(SPairDataset(root=spair_copy, split="dhf-test-360").pairs())
        assert len(srv.requests) == 1, "a verified cached list is not downloaded again"
    cached = spair_copy / ".corrbench" / "dhf" / "spair_71k_test-360.json"
    assert cached.read_bytes() == data
    entries = json.loads(data)
    assert [p.id for p in again] == [p.id for p in pairs] and len(pairs) == len(entries)
    by_key = {(o["category"], o["src_imname"], o["trg_imname"]): (s, o) for s, o in spair_fx.pairs["test"]}
    for pair, e in zip(pairs, entries):
        stem, obj = by_key[(e["category"], Path(e["source_path"]).name, Path(e["target_path"]).name)]
        assert pair.metadata["spair_pair"] == stem
        assert pair.metadata["keypoint_ids"] == [int(k) for k in obj["kps_ids"]]
        assert {k: pair.metadata[k] for k in ds.difficulty_flags} == {k: obj[k] for k in ds.difficulty_flags}
        assert pair.target_size == tuple(obj["trg_imsize"][:2])
        assert pair.target_box == tuple(obj["trg_bndbox"])
    proto = ds.protocol()
    assert proto["pair_list_sha256"] == sha and proto["pair_list_name"] == "spair_71k_test-360.json"
    assert proto["metadata_joined_pairs"] == len(entries) and proto["pair_list_source"].endswith("/ann/spair_71k_test-360.json")


def test_wrong_dhf_list_is_rejected(spair_copy, spair_fx, monkeypatch):
    data, _ = _served_list(spair_fx)  # not the published file: its sha256 differs (docs/datasets.md)
    with LoopbackServer({"/ann/spair_71k_test-360.json": data}) as srv:
        monkeypatch.setenv("CORRBENCH_DHF_ANNOTATIONS_URL", f"{srv.url}/ann")
        with pytest.raises(ChecksumError, match=r"spair_71k_test-360.json: sha256 mismatch: expected 2f93f0ca"):
            list(SPairDataset(root=spair_copy, split="dhf-test-360").pairs())
    kept = [p.name for p in (spair_copy / ".corrbench" / "dhf").iterdir() if not p.name.endswith(".lock")]
    assert kept == [], "a rejected file is not kept"


def test_unreachable_dhf_list_says_how_to_work_offline(spair_copy, monkeypatch):
    with LoopbackServer({}) as srv:
        url = srv.url
    monkeypatch.setenv("CORRBENCH_DHF_ANNOTATIONS_URL", url)  # the server is closed: connection refused
    with pytest.raises(DataError, match=r"download failed .* pass it with --set spair.pairs=FILE"):
        list(SPairDataset(root=spair_copy, split="dhf-val-360").pairs())


def test_local_copy_of_the_dhf_list(spair_copy, spair_fx, monkeypatch, tmp_path):
    data, sha = _served_list(spair_fx, "val")
    local = tmp_path / "my-val-360.json"
    local.write_bytes(data)
    monkeypatch.setenv("CORRBENCH_DHF_ANNOTATIONS_URL", "http://127.0.0.1:9/never-used")
    with pytest.raises(ChecksumError, match=r"not the published spair_71k_val-360.json; .*--dataset dhf-json"):
        list(SPairDataset(root=spair_copy, split="dhf-val-360", config={"pairs": str(local)}).pairs())
    _with_sha(monkeypatch, "dhf-val-360", sha)
    ds = SPairDataset(root=spair_copy, split="dhf-val-360", config={"pairs": str(local), "categories": "cat"})
    pairs = list(ds.pairs())
    assert pairs and {p.category for p in pairs} == {"cat"}
    assert all("spair_pair" in p.metadata for p in pairs)  # joined with PairAnnotation/val
    assert ds.protocol()["pair_list"] == str(local)


def test_custom_list_on_a_standard_split(spair_copy, spair_fx, tmp_path):
    entries = dhf_list_from_spair(spair_fx, "test")[:3]
    entries[0]["target_points"][0] = [1, 1]  # not the annotated point: keypoint ids must not be attached
    path = tmp_path / "three.json"
    path.write_text(json.dumps(entries))
    pairs = list(SPairDataset(root=spair_copy, split="test", config={"pairs": str(path)}).pairs())
    assert len(pairs) == 3
    assert "keypoint_ids" not in pairs[0].metadata and "keypoint_ids" in pairs[1].metadata
    assert "viewpoint_variation" in pairs[0].metadata


# ------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------
def test_spair_end_to_end_with_flags_and_target_box_threshold(spair_fx, tmp_path):
    from corrbench.runner import run_benchmark

    res = run_benchmark("colour-patch", "spair", data_root=spair_fx.root, cache_dir=tmp_path / "c",
                        out_dir=tmp_path / "out", progress=False)
    ds = res.results["dataset"]
    assert ds["n_pairs"] == len(spair_fx.pairs["test"]) and ds["skipped"] == []
    assert set(res.breakdown["group"]) >= {"category", "viewpoint_variation", "occlusion"}
    preds = {json.loads(l)["pair"]: json.loads(l) for l in (tmp_path / "out" / "predictions.jsonl").open()}
    for stem, obj in spair_fx.pairs["test"]:
        l, t, r, b = obj["trg_bndbox"]
        assert preds[stem]["L_bbox"] == max(r - l, b - t)
        assert preds[stem]["L_img"] == max(obj["trg_imsize"][:2])


def _bad_copy(spair_fx, tmp_path):
    from PIL import Image

    root = tmp_path / "SPair-71k"
    shutil.copytree(spair_fx.root, root)
    stems = [s for s, _ in spair_fx.pairs["test"]]
    objs = dict(spair_fx.pairs["test"])
    (root / "PairAnnotation" / "test" / f"{stems[0]}.json").write_text("[1, 2")           # malformed JSON
    o = objs[stems[1]]
    (root / "JPEGImages" / o["category"] / o["trg_imname"]).unlink()                      # missing image
    o = objs[stems[-1]]
    img = root / "JPEGImages" / o["category"] / o["src_imname"]
    img.write_bytes(img.read_bytes()[:200])                                               # truncated image
    bad_kp = dict(objs[stems[2]])
    bad_kp["trg_kps"] = [[10_000, 5]] + bad_kp["trg_kps"][1:]                             # outside the image
    (root / "PairAnnotation" / "test" / f"{stems[2]}.json").write_text(json.dumps(bad_kp))
    # grey / CMYK / RGBA images are converted, not rejected
    damaged = {(objs[stems[1]]["category"], objs[stems[1]]["trg_imname"]), (o["category"], o["src_imname"])}
    others = sorted({(o["category"], o["src_imname"]) for o in objs.values()} - damaged)
    for (cat, name), mode in zip(others[:3], ("L", "CMYK", "RGBA")):
        p = root / "JPEGImages" / cat / name
        with Image.open(p) as im:
            conv = im.convert(mode)
        if mode == "RGBA":
            conv.save(p, "PNG")  # PIL opens by content, whatever the suffix
        else:
            conv.save(p, "JPEG")
    return root, others[:3]


def test_bad_data_is_an_error_or_a_counted_skip(spair_fx, tmp_path):
    from corrbench.runner import run_benchmark

    root, converted = _bad_copy(spair_fx, tmp_path)
    with pytest.raises(DataError, match=r"\.json: malformed JSON"):
        run_benchmark("colour-patch", "spair", data_root=root, cache_dir=tmp_path / "c", progress=False)
    with pytest.warns(UserWarning, match="skipping"):
        res = run_benchmark("colour-patch", "spair", data_root=root, cache_dir=tmp_path / "c", progress=False,
                            skip_invalid=True)
    skipped = res.results["dataset"]["skipped"]
    text = "\n".join(skipped)
    assert "malformed JSON" in text and "is missing" in text and "outside the" in text
    assert "unreadable or truncated" in text
    # every pair is either evaluated or named in the skip list: nothing is silently dropped
    named = {p for p in (s.split()[1].rstrip(":") for s in skipped if s.startswith("pair "))}
    named |= {s for s, _ in spair_fx.pairs["test"] if any(f"{s}.json" in m for m in skipped)}
    assert res.results["dataset"]["n_pairs"] + len(named) == len(spair_fx.pairs["test"])
    assert len(skipped) == len(named)
    assert not any(name in text for _, name in converted), "grey, CMYK and RGBA images are converted, not skipped"


# ------------------------------------------------------------------------------------------
# corrbench data download / verify / info
# ------------------------------------------------------------------------------------------
def _tarball(src: Path, arcname: str, extra: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(src, arcname=arcname)
        for info in extra:
            tf.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return buf.getvalue()


def _cli(args):
    from corrbench.cli import build_cli

    return CliRunner().invoke(build_cli(), args, catch_exceptions=True)


def test_data_download_verify_info(spair_fx, tmp_path, monkeypatch):
    archive = _tarball(spair_fx.root, "SPair-71k")
    test_list, test_sha = _served_list(spair_fx, "test")
    val_list, val_sha = _served_list(spair_fx, "val")
    _with_sha(monkeypatch, "dhf-test-360", test_sha)
    _with_sha(monkeypatch, "dhf-val-360", val_sha)
    with LoopbackServer({"/SPair-71k.tar.gz": archive, "/ann/spair_71k_test-360.json": test_list,
                         "/ann/spair_71k_val-360.json": val_list}) as srv:
        srv.fail_after["/SPair-71k.tar.gz"] = len(archive) // 3  # the first connection drops
        monkeypatch.setenv("CORRBENCH_SPAIR_URL", f"{srv.url}/SPair-71k.tar.gz")
        monkeypatch.setenv("CORRBENCH_DHF_ANNOTATIONS_URL", f"{srv.url}/ann")
        root = tmp_path / "data" / "SPair-71k"
        res = _cli(["data", "download", "spair", "--root", str(root), "--no-progress"])
        assert res.exit_code == 0, res.output + repr(res.exception)
        assert any(r[1] and r[1].startswith("bytes=") for r in srv.requests if r[0] == "/SPair-71k.tar.gz")
    assert "installed" in res.output
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["SPair-71k"]  # archive and temp removed
    manifest = json.loads((root / ".corrbench" / "download.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(archive).hexdigest() and manifest["sha256_verified"] is False
    assert (root / ".corrbench" / "dhf" / "spair_71k_val-360.json").read_bytes() == val_list
    for split in ("trn", "val", "test"):
        assert read_layout(root, split) == [s for s, _ in spair_fx.pairs[split]]

    res = _cli(["data", "verify", "spair", "--root", str(root)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "split test: ok" in res.output and "spair: ok" in res.output
    res = _cli(["data", "info", "spair", "--root", str(root), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["pairs"]["test"] == len(spair_fx.pairs["test"])

    # a broken dataset is named, and verify fails
    stem = read_layout(root, "val")[0]
    (root / "PairAnnotation" / "val" / f"{stem}.json").write_text("{")
    res = _cli(["data", "verify", "spair", "--root", str(root), "--split", "val"])
    assert res.exit_code != 0 and isinstance(res.exception, DataError)
    assert f"{stem}.json: malformed JSON" in res.output


def test_download_with_wrong_checksum_or_malicious_archive_installs_nothing(spair_fx, tmp_path, monkeypatch):
    evil_link = tarfile.TarInfo("SPair-71k/JPEGImages/escape")
    evil_link.type, evil_link.linkname = tarfile.SYMTYPE, "../../../../etc"
    evil_file = tarfile.TarInfo("SPair-71k/../../pwned.txt")
    evil_file.size = 1
    archives = {"/good.tar.gz": _tarball(spair_fx.root, "SPair-71k"),
                "/link.tar.gz": _tarball(spair_fx.root, "SPair-71k", [evil_link]),
                "/dots.tar.gz": _tarball(spair_fx.root, "SPair-71k", [evil_file])}
    root = tmp_path / "data" / "SPair-71k"
    with LoopbackServer(archives) as srv:
        res = _cli(["data", "download", "spair", "--root", str(root), "--url", f"{srv.url}/good.tar.gz",
                    "--sha256", "0" * 64, "--no-progress"])
        assert isinstance(res.exception, ChecksumError) and not root.exists()
        for name, message in (("/link.tar.gz", "leaves the extraction folder"), ("/dots.tar.gz", "contains '..'")):
            res = _cli(["data", "download", "spair", "--root", str(root), "--url", f"{srv.url}{name}",
                        "--no-progress"])
            assert isinstance(res.exception, UnsafeArchiveError) and message in str(res.exception)
            assert not root.exists()
            assert not any(p.name.startswith(".SPair-71k.partial") for p in (tmp_path / "data").iterdir())
    assert not (tmp_path / "pwned.txt").exists()


def test_data_commands_are_registered_and_errors_are_clean(tmp_path):
    res = _cli(["data", "--help"])
    assert res.exit_code == 0 and "download" in res.output and "verify" in res.output
    res = _cli(["data", "info", "no-such-dataset"])
    assert "unknown dataset 'no-such-dataset'" in str(res.exception)
    res = _cli(["data", "verify", "spair", "--root", str(tmp_path / "absent")])
    assert isinstance(res.exception, DataError) and "does not exist" in res.output
    res = _cli(["data", "download", "dhf-json", "--root", str(tmp_path)])
    assert "cannot be downloaded by corrbench" in str(res.exception)
