import warnings

import torch

from corrbench.cache import FeatureCache


def test_hit_miss_and_config_change(tmp_path):
    ident = {"method": "m", "config": {"a": 1}, "weights": "w"}
    cache = FeatureCache(tmp_path, "m", ident)
    assert cache.get("ab" * 32) is None
    t = torch.randn(4, 5, 6)
    cache.put("ab" * 32, t, {"grid": "1,1,0,0"})
    got, meta = cache.get("ab" * 32)
    assert torch.equal(got, t) and meta["grid"] == "1,1,0,0"
    assert (cache.dir / "config.json").is_file()
    changed = FeatureCache(tmp_path, "m", {**ident, "config": {"a": 2}})
    assert changed.dir != cache.dir and changed.get("ab" * 32) is None
    assert FeatureCache(tmp_path, "m", {**ident, "weights": "w2"}).dir != cache.dir


def test_corrupt_entry_is_reported_and_dropped(tmp_path):
    cache = FeatureCache(tmp_path, "m", {"method": "m"})
    cache.put("cd" * 32, torch.ones(2, 3, 3), {})
    path = cache._path("cd" * 32)
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"  # flip the last float: checksum no longer matches
    path.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert cache.get("cd" * 32) is None
    assert any("corrupt" in str(x.message) for x in w)
    assert not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"truncated")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cache.get("cd" * 32) is None


def test_no_temporary_files_left_behind(tmp_path):
    cache = FeatureCache(tmp_path, "m", {"method": "m"})
    for i in range(3):
        cache.put(f"{i:02d}" * 32, torch.zeros(1, 2, 2), {})
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_warm_rerun_reuses_predictions_and_recovers_from_a_bad_one(tmp_path, synthetic_dataset, monkeypatch):
    import corrbench.runner as runner
    from corrbench.readouts import NearestNeighbour

    first = runner.run_benchmark("colour-patch", "synthetic", limit=5, cache_dir=tmp_path, progress=False)

    def no_readout(*args, **kwargs):
        raise AssertionError("the readout ran although its predictions were cached")

    monkeypatch.setattr(NearestNeighbour, "transfer", no_readout)
    second = runner.run_benchmark("colour-patch", "synthetic", limit=5, cache_dir=tmp_path, progress=False)
    assert first.summary.equals(second.summary)

    victim = sorted(tmp_path.rglob("predictions/*/*.npy"))[0]
    victim.write_bytes(b"garbage")
    monkeypatch.undo()
    third = runner.run_benchmark("colour-patch", "synthetic", limit=5, cache_dir=tmp_path, progress=False)
    assert first.summary.equals(third.summary)


def test_family_method_names_make_one_safe_folder(tmp_path):
    """``hf:/models/dinov2`` or ``timm:vit_small`` are method names, not paths."""
    from corrbench.cache import FeatureCache

    for name in ("hf:/models/dinov2-small", "timm:vit_small_patch14_dinov2", "../escape"):
        cache = FeatureCache(tmp_path, name, {"method": name})
        assert cache.dir.parent == tmp_path
        assert ":" not in cache.dir.name and "/" not in cache.dir.name and not cache.dir.name.startswith(".")
    a = FeatureCache(tmp_path, "hf:/a/b", {"method": "hf:/a/b"})
    b = FeatureCache(tmp_path, "hf:/a_b", {"method": "hf:/a_b"})
    assert a.dir != b.dir  # same safe name, different identity
