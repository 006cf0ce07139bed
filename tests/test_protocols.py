"""Protocol presets: every knob set at once, recorded, explained, and never silently mixed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from corrbench.plugins import get_host
from corrbench.protocols import BUILTIN, Protocol
from corrbench.sampling import per_category_sample


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "corrbench", *args], capture_output=True, text=True)


def test_every_builtin_preset_is_registered_and_listed():
    host = get_host()
    assert set(host.protocols.names()) == {p.name for p in BUILTIN}
    proc = _cli("list", "protocols")
    assert proc.returncode == 0
    for p in BUILTIN:
        assert p.name in proc.stdout


def test_presets_name_their_source_and_use_registered_readouts():
    readouts = set(get_host().readouts.names())
    for p in BUILTIN:
        assert p.source and p.description
        assert p.readout is None or p.readout in readouts
        assert 0.10 in p.alphas


def test_bad_preset_values_are_refused():
    with pytest.raises(ValueError):
        Protocol(name="x", description="", source="", compare="<=")
    with pytest.raises(ValueError):
        Protocol(name="x", description="", source="", headline_average="median")


def test_unknown_protocol_is_a_one_line_usage_error(tmp_path):
    proc = _cli("run", "--protocol", "nope", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "geoaware" in proc.stderr and "Traceback" not in proc.stderr


class _P:
    def __init__(self, i, c):
        self.id, self.category = i, c


def test_per_category_sample_keeps_k_per_category_without_repeats():
    pairs = [_P(i, "abc"[i % 3] if i < 60 else "d") for i in range(64)]
    got = per_category_sample(pairs, 5, seed=1)
    counts = pd.Series([p.category for p in got]).value_counts().to_dict()
    assert counts == {"a": 5, "b": 5, "c": 5, "d": 4}  # d has only 4 pairs: all of them
    assert len({p.id for p in got}) == len(got)
    assert [p.id for p in got] == sorted(p.id for p in got)  # split order kept
    assert [p.id for p in got] == [p.id for p in per_category_sample(pairs, 5, seed=1)]
    assert [p.id for p in got] != [p.id for p in per_category_sample(pairs, 5, seed=2)]


def _naive(rows, alpha, norm, average, compare):
    def ok(d, L):
        return d <= alpha * L * (1 + 1e-9) if compare == "le" else d < alpha * L * (1 - 1e-9)

    if average == "point":
        flags = [ok(d, r[f"L_{norm}"]) for r in rows for d in r["distances"]]
        return 100.0 * sum(flags) / len(flags)
    return 100.0 * float(np.mean([np.mean([ok(d, r[f"L_{norm}"]) for d in r["distances"]]) for r in rows]))


def _predictions(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_protocols(tmp_path_factory):
    """The synthetic benchmark under dhf and under geoaware (colour-patch: cheap even at 840 px)."""
    base = tmp_path_factory.mktemp("protocols")
    runs = {}
    for name in ("dhf", "geoaware"):
        out = base / name
        proc = _cli("run", "-m", "colour-patch", "--protocol", name, "--limit", "40", "--resamples", "200",
                    "--out", str(out), "--cache-dir", str(base / "cache"), "--data-root", str(base / "data"))
        assert proc.returncode == 0, proc.stderr
        runs[name] = (out, proc)
    return runs


def test_geoaware_and_dhf_differ_in_every_recorded_knob(two_protocols):
    dhf = json.loads((two_protocols["dhf"][0] / "results.json").read_text())
    geo = json.loads((two_protocols["geoaware"][0] / "results.json").read_text())
    assert dhf["protocol"]["name"] == "dhf" and geo["protocol"]["name"] == "geoaware"
    assert geo["protocol"]["preset"]["pairs_per_category"] == 20
    assert geo["protocol"]["compare"] == "lt" and dhf["protocol"]["compare"] == "le"
    assert geo["protocol"]["headline"] == {"metric": "pck@0.10_bbox", "average": "image"}
    m_geo, m_dhf = geo["methods"]["colour-patch"], dhf["methods"]["colour-patch"]
    assert m_geo["readout"] == "window-soft-argmax" and m_dhf["readout"] == "nn"
    assert m_geo["preprocess"]["resize"] == "pad_square" and m_geo["preprocess"]["load_size"] == 840
    assert m_dhf["preprocess"]["resize"] == "square" and m_dhf["preprocess"]["load_size"] == 224
    # the subsample: at most 20 pairs per category, announced in one line
    assert geo["dataset"]["per_category_sample"]["per_category"] == 20
    per_cat = pd.Series([r["category"] for r in _predictions(two_protocols["geoaware"][0])]).value_counts()
    assert per_cat.max() <= 20
    stderr = two_protocols["geoaware"][1].stderr
    if geo["dataset"]["per_category_sample"]["n"] < geo["dataset"]["per_category_sample"]["of"]:
        assert sum("pairs per category" in line for line in stderr.splitlines()) == 1
    # different numbers, each with an interval
    for res in (dhf, geo):
        ci = res["methods"]["colour-patch"]["statistics"]["ci95"]
        assert ci["point"]["pck@0.10_bbox"][0] <= ci["point"]["pck@0.10_bbox"][1]
    assert m_geo["metrics"] != m_dhf["metrics"]


@pytest.mark.parametrize("name, compare, average", [("dhf", "le", "point"), ("geoaware", "lt", "image")])
def test_each_protocols_headline_equals_a_naive_computation(two_protocols, name, compare, average):
    out, proc = two_protocols[name]
    rows = _predictions(out)
    expected = _naive(rows, 0.1, "bbox", average, compare)
    summary = pd.read_csv(out / "summary.csv")
    cell = summary[(summary.average == average) & (summary.norm == "bbox") & (summary.alpha.sub(0.1).abs() < 1e-9)]
    assert float(cell.value.iloc[0]) == pytest.approx(expected, abs=1e-4)
    assert f"{expected:.2f}" in proc.stdout  # the printed headline is this number
    assert f"protocol {name}" in proc.stdout


def test_compare_refuses_to_mix_protocols_unless_asked(two_protocols):
    dhf, geo = two_protocols["dhf"][0], two_protocols["geoaware"][0]
    proc = _cli("compare", str(dhf), str(geo))
    assert proc.returncode == 2
    assert "protocol 'dhf'" in proc.stderr and "'geoaware'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = _cli("compare", str(dhf), str(geo), "--allow-mixed-protocols", "--tolerance", "100", "--allow-missing")
    assert proc.returncode == 0, proc.stderr
    assert "compared anyway" in proc.stdout
    proc = _cli("paired", str(dhf), str(geo), "-a", "colour-patch", "-b", "colour-patch")
    assert proc.returncode == 2 and "one protocol" in proc.stderr


def test_changed_knobs_are_recorded_as_overrides(tmp_path):
    out = tmp_path / "o"
    proc = _cli("run", "-m", "colour-patch", "--protocol", "dift", "--readout", "nn", "--compare", "lt",
                "--limit", "4", "--resamples", "100", "--out", str(out), "--cache-dir", str(tmp_path / "c"),
                "--data-root", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["name"] == "dift" and res["protocol"]["overrides"] == ["compare", "readout"]
    assert res["methods"]["colour-patch"]["preprocess"]["load_size"] == 768
    assert "dift + compare, readout changed" in proc.stdout


def test_a_protocols_preprocessing_changes_the_cache_identity(tmp_path):
    from corrbench.identity import method_identity
    from corrbench_classic.descriptors import ColourPatch

    d = ColourPatch()
    plain = method_identity(d, weights="none")
    d.preprocess_changes = {"resize": "pad_square", "load_size": 840}
    assert method_identity(d, weights="none")["preprocess"] != plain["preprocess"]


def test_info_describes_a_protocol():
    proc = _cli("info", "probe3d")
    assert proc.returncode == 0
    assert "protocol from plugin corrbench" in proc.stdout
    assert "pairs_per_category: 200" in proc.stdout and "headline_average: category" in proc.stdout


def test_rejected_keypoints_score_as_misses_through_the_cli(tmp_path):
    out = tmp_path / "o"
    proc = _cli("run", "-m", "dsift", "--readout", "mutual-nn", "--set", "readout.radius=0", "--limit", "6",
                "--resamples", "100", "--out", str(out), "--cache-dir", str(tmp_path / "c"),
                "--data-root", str(tmp_path / "d"))
    assert proc.returncode == 0, proc.stderr
    rows = _predictions(out)
    assert any(any(r.get("rejected") or []) for r in rows)
    flags = [(not rej) and d <= 0.1 * r["L_bbox"] * (1 + 1e-9)
             for r in rows for d, rej in zip(r["distances"], r.get("rejected") or [False] * len(r["distances"]))]
    summary = pd.read_csv(out / "summary.csv")
    cell = summary[(summary.average == "point") & (summary.norm == "bbox") & (summary.alpha.sub(0.1).abs() < 1e-9)]
    assert float(cell.value.iloc[0]) == pytest.approx(100.0 * sum(flags) / len(flags), abs=1e-4)
    res = json.loads((out / "results.json").read_text())
    assert res["methods"]["dsift"]["statistics"]["rejected_keypoints"] == sum(
        sum(r.get("rejected") or []) for r in rows)


def test_a_baseline_file_states_its_protocol_per_dataset(tmp_path):
    from corrbench.compare import cells_from_baseline, compare_cells
    from corrbench.errors import UsageError

    def baseline(preset):
        info = {"split": "test", "protocol": "free text about the pair list"}
        if preset:
            info["protocol_preset"] = preset
        return cells_from_baseline({"format": "corrbench-baseline/1", "datasets": {"spair": info},
                                    "rows": [{"method": "m", "metrics": {"spair": {"pck@0.10_bbox": 50.0}}}]})

    assert baseline(None).protocols == {"spair": "dhf"}  # files that predate presets: the dhf protocol
    with pytest.raises(UsageError, match="protocol 'dift'"):
        compare_cells(baseline("dift"), baseline(None))
    cmp = compare_cells(baseline("dift"), baseline(None), allow_mixed=True)
    assert cmp.ok and any("compared anyway" in n for n in cmp.notes)
