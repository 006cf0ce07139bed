"""Layering: the core knows contracts, never a plugin family.

Every module under corrbench/ is parsed (not imported) and must not import a ``corrbench_*`` module: no
top-level import, no lazy import inside a function, no ``importlib.import_module("corrbench_...")`` /
``__import__`` with a literal name, no ``"corrbench_x.mod:Object"`` lazy target. Built-in plugins reach
the core only through the hooks and the Descriptor/Dataset contracts (docs/plugins.md), exactly as a
third-party plugin does; the second test proves that with a plugin built here.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "corrbench"

#: files allowed to break the rule (none: the regression lane asks every method for its tiny_config)
KNOWN: set[str] = set()

_PLUGIN = re.compile(r"corrbench_\w+")
#: the plugin packages of this checkout: a string naming one ("corrbench_sd", "corrbench_dhf.table:T") is a
#: lazy import or a branch on a plugin family; other corrbench_* strings (dict keys...) are not
PACKAGES = {p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").is_file()}
_TARGET = re.compile(r"(corrbench_\w+)(\.\w+)*(:[\w.]+)?")
_IMPORTERS = {"import_module", "__import__", "import_target", "find_spec"}


def _is_plugin(name: str | None) -> bool:
    return bool(name) and _PLUGIN.fullmatch(name.split(".")[0]) is not None


def plugin_imports(source: str, filename: str = "<string>") -> list[str]:
    """``line: what`` for every reference to a corrbench_* module in ``source``."""
    found = []
    tree = ast.parse(source, filename)
    named = set()  # the literal names of import_module(...) calls, reported once as the call
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if _is_plugin(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and _is_plugin(node.module):
                found.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in _IMPORTERS and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str) and _is_plugin(node.args[0].value):
                found.append(f"{node.lineno}: {name}({node.args[0].value!r})")
                named.add(id(node.args[0]))
    for node in ast.walk(tree):
        m = _TARGET.fullmatch(node.value) if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
        if m and id(node) not in named and (m.group(1) in PACKAGES or m.group(0) != m.group(1)):
            found.append(f"{node.lineno}: string {node.value!r}")
    return sorted(set(found), key=lambda s: int(s.split(":")[0]))


def test_the_checker_sees_every_kind_of_plugin_import():
    src = textwrap.dedent("""
        import corrbench_sd
        import os, corrbench_dino.models as m
        from corrbench_dhf.weights import HF_REPO
        from . import corrbench_like  # a relative module of the core: fine
        def f():
            from corrbench_dhpf import learner
            import importlib
            importlib.import_module("corrbench_datasets.dhf_lists")
            __import__("corrbench_classic")
            if family == "corrbench_dhf":
                return "corrbench_x.y:Z", "see corrbench_sd for SD", "corrbench_version"  # the last two: fine
    """)
    hits = plugin_imports(src)
    assert [h.split(": ", 1)[1] for h in hits] == [
        "import corrbench_sd", "import corrbench_dino.models", "from corrbench_dhf.weights import ...",
        "from corrbench_dhpf import ...", "import_module('corrbench_datasets.dhf_lists')",
        "__import__('corrbench_classic')", "string 'corrbench_dhf'", "string 'corrbench_x.y:Z'"]


def test_the_core_imports_no_plugin():
    bad = {}
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        hits = plugin_imports(path.read_text(encoding="utf-8"), rel)
        if hits and rel not in KNOWN:
            bad[rel] = hits
    assert not bad, "the core must not import plugins (use a hook or a Descriptor/Dataset method):\n" + \
        "\n".join(f"  {f}: {h}" for f, hs in bad.items() for h in hs)
    for rel in KNOWN:  # an exception that no longer applies must be removed from KNOWN
        assert plugin_imports((ROOT / rel).read_text(encoding="utf-8"), rel), f"{rel} is clean: drop it from KNOWN"


# -- a third-party plugin, installed as its own distribution, registers a descriptor and a table -------------
PLUGIN = '''
"""A third-party corrbench plugin: a descriptor, a readout and a table, through the public contracts only."""

import corrbench
from corrbench.reproduce import DatasetSpec, Row, TableSpec


class Mean3(corrbench.Descriptor):
    """Colour averaged over a 3x3 window (weight-free)."""

    name = "thirdparty-mean3"
    weight_free = True
    default_readout = "thirdparty-cell-argmax"
    cost_estimate = {"image": (0.001, 0.002)}

    def extract(self, images):
        import torch.nn.functional as F

        return F.avg_pool2d(images, 3, stride=1, padding=1)

    def requirements(self):
        return [corrbench.Requirement("weights", "thirdparty marker file", "(none)", "not needed")]


class CellArgmax(corrbench.Readout):
    """The cell nearest the keypoint, cosine argmax over the target cells, that cell's centre."""

    name = "thirdparty-cell-argmax"

    def transfer(self, x):
        import torch
        import torch.nn.functional as F

        sg, tg = x.source_grid, x.target_grid
        _, hs, ws = x.source_map.shape
        wt = x.target_map.shape[2]
        ix = ((x.source_points[:, 0] - sg.offset_x) / sg.stride_x).round().long().clamp(0, ws - 1)
        iy = ((x.source_points[:, 1] - sg.offset_y) / sg.stride_y).round().long().clamp(0, hs - 1)
        src = F.normalize(x.source_map[:, iy, ix].T.double(), dim=1)
        tgt = F.normalize(x.target_map.flatten(1).double(), dim=0)
        best = (src @ tgt).argmax(dim=1)
        points = torch.stack([tg.offset_x + (best % wt) * tg.stride_x, tg.offset_y + (best // wt) * tg.stride_y], 1)
        return corrbench.ReadoutOutput(points.double())


TABLE = TableSpec(
    name="thirdparty-table",
    title="A third-party table",
    source="made up for a test",
    datasets={"synthetic": DatasetSpec("synthetic", "Synthetic shapes", "test", "all test pairs", 10, 10)},
    rows=(Row("Mean3", "thirdparty-mean3", "1", "no", {"synthetic": {"img": 50.0, "bbox": 40.0}}),
          Row("Dense SIFT", "dsift", "1", "no", {"synthetic": {"img": 60.0, "bbox": 50.0}})),
    metric={"name": "pck", "alpha": 0.10, "norms": ["img", "bbox"]},
    deviations=("none: a test table",),
)


@corrbench.hookimpl
def register_methods(register):
    register(Mean3)


@corrbench.hookimpl
def register_readouts(register):
    register(CellArgmax)


@corrbench.hookimpl
def register_tables(register):
    register(TABLE)
'''


@pytest.fixture(scope="module")
def third_party_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("thirdparty_site")
    (site / "thirdparty_corr").mkdir()
    (site / "thirdparty_corr" / "__init__.py").write_text(PLUGIN)
    dist = site / "thirdparty_corr-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-corr\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[corrbench]\nthirdparty = thirdparty_corr\n")
    return site


def _cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "corrbench", *args], capture_output=True, text=True, env=env)


def test_a_third_party_table_runs_through_corrbench_reproduce(third_party_site, tmp_path):
    plugins = json.loads(_cli(third_party_site, "plugins").stdout)
    mine = next(p for p in plugins if p["name"] == "thirdparty")
    assert mine["methods"] == ["thirdparty-mean3"] and mine["tables"] == ["thirdparty-table"]
    assert mine["readouts"] == ["thirdparty-cell-argmax"]
    assert "thirdparty-table" in _cli(third_party_site, "reproduce", "--help").stdout

    data = ["--data-root", f"synthetic={tmp_path / 'synthetic'}"]
    dry = _cli(third_party_site, "reproduce", "thirdparty-table", "--dry-run", "--device", "cpu", *data)
    assert dry.returncode == 0, dry.stderr
    assert "Mean3 [thirdparty-mean3]" in dry.stdout and "[not needed] weights: thirdparty marker file" in dry.stdout
    assert "[present] data: synthetic dataset" in dry.stdout

    out = tmp_path / "out"
    run = _cli(third_party_site, "reproduce", "thirdparty-table", "--datasets", "synthetic", "--device", "cpu",
               "--limit", "6", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet", *data)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("table.md", "table.csv", "table.tex", "reproduce.json", "synthetic/results.json"):
        assert (out / name).is_file(), name
    rep = json.loads((out / "reproduce.json").read_text())
    assert rep["table"] == "thirdparty-table"
    rows = {r["method"]: r for r in rep["rows"]}
    assert set(rows) == {"thirdparty-mean3", "dsift"}
    results = json.loads((out / "synthetic" / "results.json").read_text())
    assert results["methods"]["thirdparty-mean3"]["readout"] == "thirdparty-cell-argmax"  # its default readout
    assert results["methods"]["dsift"]["readout"] == "nn"
    for method, row in rows.items():
        assert row["synthetic_img_paper"] in (50.0, 60.0)
        assert row["synthetic_img_ours"] == pytest.approx(results["methods"][method]["metrics"]["pck@0.10_img"])
        assert row["verdict"] in ("reproduced", "below paper", "above paper")
    assert "| Mean3 (`thirdparty-mean3`) |" in (out / "table.md").read_text()
