"""CUB-200-2011: native text files, the frozen pair protocol, and the dataset."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corrbench.errors import DataError, MissingDataError, UsageError
from corrbench.testing.datasets import CUB_PART_NAMES, write_cub_fixture
from corrbench_datasets.cub import pairs as cubmod  # where the pair list is made
from corrbench_datasets.cub import CUBDataset, candidate_pairs, ensure_pair_list, make_pair_list, read_cub


@pytest.fixture(scope="module")
def cub_fx(tmp_path_factory):
    return write_cub_fixture(tmp_path_factory.mktemp("cub") / "CUB_200_2011", classes=3, train_per_class=2,
                             test_per_class=4)


@pytest.fixture
def cub_copy(cub_fx, tmp_path):
    """A private copy (tests that write the pair list or corrupt files)."""
    dst = tmp_path / "CUB_200_2011"
    shutil.copytree(cub_fx.root, dst, ignore=shutil.ignore_patterns(".corrbench"))
    return dst


def _expected_box(rec):
    x, y, w, h = rec.box_xywh
    return (x, y, x + w, y + h)


# ------------------------------------------------------------------------------------------
# Text files
# ------------------------------------------------------------------------------------------
def test_fixture_follows_the_real_format(cub_fx):
    root = cub_fx.root
    lines = (root / "parts" / "part_locs.txt").read_text().splitlines()
    assert len(lines) == 15 * len(cub_fx.images)
    keys = [tuple(map(int, ln.split()[:2])) for ln in lines]
    assert keys == sorted(keys)  # image then part order
    assert all(any(ln.endswith(" 0.0 0.0 0") for ln in lines[i * 15:(i + 1) * 15]) for i in range(len(cub_fx.images)))
    assert (root / "parts" / "parts.txt").read_text().splitlines()[6] == "7 left eye"
    assert (root / "bounding_boxes.txt").read_text().splitlines()[0].split()[1].endswith(".0")
    assert len((root / "parts" / "part_click_locs.txt").read_text().splitlines()[0].split()) == 6
    assert all(r.size[0] != r.size[1] for r in cub_fx.images.values())
    assert any(x == r.size[0] - 1 for r in cub_fx.images.values() for x, _ in r.visible().values())


def test_read_cub_matches_the_records(cub_fx):
    ann = read_cub(cub_fx.root)
    assert sorted(ann.images) == list(range(1, len(cub_fx.images) + 1))  # 1-based
    assert ann.part_names == {i + 1: n for i, n in enumerate(CUB_PART_NAMES)}
    for i, rec in cub_fx.images.items():
        assert ann.images[i] == rec.path
        assert ann.labels[i] == rec.class_id
        assert ann.is_train[i] == int(rec.train)
        assert ann.boxes[i] == _expected_box(rec)  # x, y, w, h → l, t, r, b
        assert ann.category(i) == rec.path.split("/")[0]
        assert {p: (x, y, bool(v)) for p, (x, y, v) in rec.parts.items()} == ann.parts[i]
    assert ann.split_ids("test") == sorted(i for i, r in cub_fx.images.items() if not r.train)


@pytest.mark.parametrize("file, content, message", [
    ("images.txt", "1 a/b.jpg\n1 a/c.jpg\n", r"images.txt:2: id 1 appears twice"),
    ("images.txt", "x a/b.jpg\n", r"images.txt:1: id must be an integer"),
    ("images.txt", "0 a/b.jpg\n", r"images.txt:1: id must be a 1-based id"),
    ("images.txt", "1\n", r"images.txt:1: expected '<id> <name>'"),
    ("train_test_split.txt", "1 2\n", r"train_test_split.txt:1: value must be one of \[0, 1\]"),
    ("bounding_boxes.txt", "1 1.0 2.0 -3.0 4.0\n", r"bounding_boxes.txt:1: box of image 1 has width -3.0"),
    ("bounding_boxes.txt", "1 1.0 2.0 nan 4.0\n", r"bounding_boxes.txt:1: width must be finite"),
    ("bounding_boxes.txt", "1 1.0 2.0 3.0\n", r"bounding_boxes.txt:1: expected '<image_id> <x> <y>"),
    ("parts/part_locs.txt", "1 1 0.0 0.0 2\n", r"part_locs.txt:1: visible must be 0 or 1"),
    ("parts/part_locs.txt", "1 1 a 0.0 1\n", r"part_locs.txt:1: x must be a number"),
    ("parts/part_locs.txt", "1 1 0.0 0.0 1\n1 1 2.0 2.0 1\n", r"part_locs.txt:2: part 1 of image 1 appears twice"),
])
def test_malformed_text_files_name_the_file_and_line(cub_copy, file, content, message):
    (cub_copy / file).write_text(content)
    with pytest.raises(DataError, match=message):
        read_cub(cub_copy)


def test_cross_file_inconsistencies_are_named(cub_copy):
    lines = (cub_copy / "bounding_boxes.txt").read_text().splitlines()
    (cub_copy / "bounding_boxes.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"bounding_boxes.txt: no entry for 1 image id\(s\)"):
        read_cub(cub_copy)
    (cub_copy / "bounding_boxes.txt").unlink()
    with pytest.raises(MissingDataError, match=r"bounding_boxes.txt: file is missing"):
        read_cub(cub_copy)


_text = st.text(alphabet=st.sampled_from("0123456789 .-e\nxa/\tnNiIf"), max_size=80)


@settings(max_examples=200, deadline=None)
@given(file=st.sampled_from(["images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt",
                             "parts/part_locs.txt", "parts/parts.txt"]), content=_text | st.binary(max_size=40))
def test_text_parsers_raise_only_data_errors_naming_the_file(cub_fx, tmp_path_factory, file, content):
    root = tmp_path_factory.mktemp("cubprop")
    shutil.copytree(cub_fx.root, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("images", ".corrbench"))
    target = root / file
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    try:
        read_cub(root)
    except DataError as exc:
        assert str(target) in str(exc) or file.split("/")[-1] in str(exc)


# ------------------------------------------------------------------------------------------
# The pair protocol
# ------------------------------------------------------------------------------------------
def _reference_list(fx, num_pairs, seed, split="test"):
    """An independent implementation of docs/datasets.md#cub-200-2011 over the fixture's own records."""
    recs = sorted((r for r in fx.images.values() if r.train == (split == "train")), key=lambda r: r.id)
    cands = sorted((a.id, b.id) for a, b in itertools.permutations(recs, 2)
                   if a.class_id == b.class_id and set(a.visible()) & set(b.visible()))
    order = np.random.default_rng(seed).permutation(len(cands))
    return [cands[k] for k in order[:num_pairs]]


@pytest.mark.parametrize("num_pairs, seed", [(360, 0), (10, 0), (10, 7)])
def test_pair_list_follows_the_protocol(cub_fx, num_pairs, seed):
    ann = read_cub(cub_fx.root)
    entries, n_cand = make_pair_list(ann, num_pairs=num_pairs, seed=seed)
    expected = _reference_list(cub_fx, num_pairs, seed)
    assert [(e["source_image_id"], e["target_image_id"]) for e in entries] == expected
    assert n_cand == len(_reference_list(cub_fx, 10**9, 0))
    assert len(entries) == min(num_pairs, n_cand)
    assert len(set(expected)) == len(expected)  # no replacement
    for e in entries:
        a, b = cub_fx.images[e["source_image_id"]], cub_fx.images[e["target_image_id"]]
        assert not a.train and not b.train and a.class_id == b.class_id and a.id != b.id
        mutual = sorted(set(a.visible()) & set(b.visible()))
        assert e["keypoint_ids"] == mutual
        assert e["source_points"] == [list(a.visible()[p]) for p in mutual]
        assert e["target_points"] == [list(b.visible()[p]) for p in mutual]
        assert e["source_path"] == a.path and e["target_path"] == b.path
        assert tuple(e["target_bounding_box"]) == _expected_box(b)
        assert tuple(e["source_bounding_box"]) == _expected_box(a)
        assert e["category"] == a.path.split("/")[0]


def test_candidates_are_sorted_and_need_a_mutually_visible_part(cub_copy):
    # make image pair (first two test images of class 1) share no visible part
    ann = read_cub(cub_copy)
    a, b = [i for i in ann.split_ids("test") if ann.labels[i] == 1][:2]
    vis_a = {p for p, (_, _, v) in ann.parts[a].items() if v}
    lines = []
    for ln in (cub_copy / "parts" / "part_locs.txt").read_text().splitlines():
        i, p = map(int, ln.split()[:2])
        lines.append(f"{i} {p} 0.0 0.0 0" if i == b and p in vis_a else ln)
    (cub_copy / "parts" / "part_locs.txt").write_text("\n".join(lines) + "\n")
    cands = candidate_pairs(read_cub(cub_copy))
    assert cands == sorted(cands)
    assert (a, b) not in cands and (b, a) not in cands


def test_pair_list_is_written_once_and_identical_on_every_machine(cub_fx, tmp_path, monkeypatch):
    roots = []
    for name in ("m1", "m2"):
        dst = tmp_path / name / "CUB_200_2011"
        shutil.copytree(cub_fx.root, dst, ignore=shutil.ignore_patterns(".corrbench"))
        roots.append(dst)
    p1 = ensure_pair_list(roots[0], num_pairs=10)
    p2 = ensure_pair_list(roots[1], num_pairs=10)
    assert p1 == roots[0] / ".corrbench" / "cub" / "cub_pairs_test_seed0_n10_v1.json"
    assert p1.read_bytes() == p2.read_bytes()
    meta = json.loads(p1.with_name("cub_pairs_test_seed0_n10_v1.meta.json").read_text())
    assert meta["sha256"] == hashlib.sha256(p1.read_bytes()).hexdigest()
    assert meta["seed"] == 0 and meta["num_pairs"] == 10 and meta["crop"] == "none"
    assert not list(p1.parent.glob("*.tmp"))
    # second use reads the cached file and never regenerates it
    monkeypatch.setattr(cubmod, "make_pair_list", lambda *a, **k: pytest.fail("regenerated"))
    assert ensure_pair_list(roots[0], num_pairs=10) == p1


def test_modified_pair_list_is_refused(cub_copy):
    path = ensure_pair_list(cub_copy, num_pairs=5)
    path.write_text(path.read_text().replace("[", "[ ", 1))
    with pytest.raises(DataError, match="was modified"):
        ensure_pair_list(cub_copy, num_pairs=5)


def test_read_only_dataset_folder_uses_the_user_cache(cub_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("CORRBENCH_CACHE", str(tmp_path / "cache"))
    (cub_copy / ".corrbench").write_text("not a folder")  # the dataset folder cannot hold the list
    path = ensure_pair_list(cub_copy, num_pairs=4)
    assert path.parent == tmp_path / "cache" / "annotations" / "cub"


# ------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------
def test_dataset_pairs_and_thresholds_use_the_target_box(cub_copy):
    ds = CUBDataset(root=cub_copy, config={"num_pairs": 8, "seed": 3})
    pairs = list(ds.pairs())
    fx_ann = read_cub(cub_copy)
    assert len(pairs) == 8
    for pair in pairs:
        entry_ids = pair.metadata["keypoint_ids"]
        src = next(i for i, r in fx_ann.images.items() if r == str(pair.source.relative_to(cub_copy / "images")))
        trg = next(i for i, r in fx_ann.images.items() if r == str(pair.target.relative_to(cub_copy / "images")))
        assert pair.target_box == fx_ann.boxes[trg] and pair.source_box == fx_ann.boxes[src]
        assert all(fx_ann.parts[src][p][2] and fx_ann.parts[trg][p][2] for p in entry_ids)
        assert pair.category == fx_ann.category(trg) and pair.source.is_file()
        assert pair.problems() == []
    proto = ds.protocol()
    assert proto["seed"] == 3 and proto["num_pairs"] == 8 and proto["crop"] == "none"
    assert proto["pair_list_sha256"] == hashlib.sha256(Path(proto["pair_list"]).read_bytes()).hexdigest()


def test_cub_runs_end_to_end_with_the_target_box_threshold(cub_copy, tmp_path):
    from corrbench.runner import run_benchmark

    res = run_benchmark("colour-patch", "cub", data_root=cub_copy, overrides=["cub.num_pairs=6"],
                        cache_dir=tmp_path / "cache", out_dir=tmp_path / "out", progress=False)
    ds = res.results["dataset"]
    assert ds["n_pairs"] == 6 and ds["skipped"] == []
    assert ds["protocol"]["num_pairs"] == 6
    preds = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    ann = read_cub(cub_copy)
    by_path = {r: i for i, r in ann.images.items()}
    for p in preds:
        trg = by_path[str(Path(p["target"]).relative_to(cub_copy / "images"))]
        l, t, r, b = ann.boxes[trg]
        assert p["L_bbox"] == pytest.approx(max(r - l, b - t))  # target box, never the source box
    m = res.results["methods"]["colour-patch"]["metrics"]
    d = np.concatenate([p["distances"] for p in preds])
    lb = np.concatenate([[p["L_bbox"]] * len(p["distances"]) for p in preds])
    assert m["pck@0.10_bbox"] == pytest.approx(100 * np.mean(d <= 0.1 * lb))


def test_custom_pair_list_and_bad_config(cub_copy, tmp_path):
    entries, _ = make_pair_list(read_cub(cub_copy), num_pairs=3, seed=1)
    custom = tmp_path / "mine.json"
    custom.write_text(json.dumps(entries[:2]))
    ds = CUBDataset(root=cub_copy, config={"pairs": str(custom)})
    assert len(list(ds.pairs())) == 2
    assert ds.protocol()["pair_list"] == str(custom)
    assert not (cub_copy / ".corrbench").exists()  # no generated list when a list is given
    with pytest.raises(UsageError, match=r"cub.crop='square': expected one of 'none', 'bbox'"):
        CUBDataset(root=cub_copy, config={"crop": "square"})
    with pytest.raises(UsageError, match="cub.num_pairs=0: expected an integer ≥ 1"):
        CUBDataset(root=cub_copy, config={"num_pairs": 0})
    with pytest.raises(UsageError, match="has no config key"):
        CUBDataset(root=cub_copy, config={"nope": 1})


def test_bad_entry_in_a_list_is_an_error_or_a_counted_skip(cub_copy, tmp_path):
    entries, _ = make_pair_list(read_cub(cub_copy), num_pairs=4, seed=0)
    entries[1]["target_points"] = entries[1]["target_points"][:-1]  # keypoint lists of different lengths
    entries[2]["source_points"] = []
    entries[2]["target_points"] = []
    custom = tmp_path / "bad.json"
    custom.write_text(json.dumps(entries))
    with pytest.raises(DataError, match=r"bad.json: entry 1: (\d+) source_points but (?!\1)\d+ target_points"):
        list(CUBDataset(root=cub_copy, config={"pairs": str(custom)}).pairs())
    ds = CUBDataset(root=cub_copy, config={"pairs": str(custom)}, skip_invalid=True)
    with pytest.warns(UserWarning, match="skipping"):
        kept = list(ds.pairs())
    assert len(kept) == 2 and len(ds.skipped) == 2
    assert "no keypoints" in ds.skipped[1]


def test_missing_root_says_how_to_get_it(tmp_path):
    ds = CUBDataset(root=tmp_path / "nowhere")
    with pytest.raises(MissingDataError, match="corrbench data download cub"):
        list(ds.pairs())


def test_verify_layout_counts_and_names_missing_files(cub_copy):
    report = CUBDataset(root=cub_copy).verify_layout()
    assert report["problems"] == []
    assert report["counts"] == {"images": 18, "classes": 3, "train": 6, "test": 12}
    assert any("11788" in n for n in report["notes"])
    first = next((cub_copy / "images").rglob("*.jpg"))
    first.unlink()
    (cub_copy / "train_test_split.txt").unlink()
    report = CUBDataset(root=cub_copy).verify_layout()
    assert report["problems"] == [f"{cub_copy / 'train_test_split.txt'}: file is missing"]
    (cub_copy / "train_test_split.txt").write_text("".join(f"{i} 0\n" for i in range(1, 19)))
    report = CUBDataset(root=cub_copy).verify_layout()
    assert len(report["problems"]) == 1 and first.name in report["problems"][0]


def test_data_download_cub_with_a_known_checksum(cub_fx, tmp_path):
    import io
    import tarfile

    from click.testing import CliRunner

    from corrbench.cli import build_cli
    from corrbench.testing.datasets import LoopbackServer

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:  # the real archive also has a top-level attributes.txt
        tf.add(cub_fx.root, arcname="CUB_200_2011", filter=lambda ti: None if ".corrbench" in ti.name else ti)
        info = tarfile.TarInfo("attributes.txt")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"1 a\n"))
    archive = buf.getvalue()
    sha = hashlib.sha256(archive).hexdigest()
    root = tmp_path / "d" / "CUB_200_2011"
    with LoopbackServer({"/CUB_200_2011.tgz": archive}) as srv:
        res = CliRunner().invoke(build_cli(), ["data", "download", "cub", "--root", str(root), "--url",
                                               f"{srv.url}/CUB_200_2011.tgz", "--sha256", sha, "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    manifest = json.loads((root / ".corrbench" / "download.json").read_text())
    assert manifest["sha256"] == sha and manifest["sha256_verified"] is True
    assert not (root / "attributes.txt").exists() and (root / "images.txt").is_file()
    assert CUBDataset(root=root).verify_layout()["problems"] == []
    res = CliRunner().invoke(build_cli(), ["data", "verify", "cub", "--root", str(root), "--set", "num_pairs=5"])
    assert res.exit_code == 0 and "split test: ok" in res.output
    assert (root / ".corrbench" / "cub" / "cub_pairs_test_seed0_n5_v1.json").is_file()
