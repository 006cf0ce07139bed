"""The README's plugin example, installed as a real separate distribution and run through the CLI."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "corrbench-grey"


def test_readme_shows_the_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    code = (EXAMPLE / "my_plugin" / "__init__.py").read_text().strip()
    blocks = [b.strip() for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)]
    assert code in blocks


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(EXAMPLE)], check=True, capture_output=True)
    return target


def _cli(site, *args, env_extra=None):
    import os

    env = {**os.environ, "PYTHONPATH": str(site), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "corrbench", *args], capture_output=True, text=True, env=env)


def test_installed_plugin_is_listed_and_evaluated(installed, tmp_path):
    out = _cli(installed, "list", "methods")
    assert out.returncode == 0 and re.search(r"^\s+grey\s", out.stdout, flags=re.M), out.stdout + out.stderr
    plugins = _cli(installed, "plugins").stdout
    assert '"corrbench-grey"' in plugins
    run = _cli(installed, "run", "--methods", "grey", "--dataset", "synthetic", "--limit", "6", "--out", str(tmp_path / "o"))
    assert run.returncode == 0, run.stderr
    assert "| grey" in run.stdout


def test_a_plugin_that_raises_on_import_is_only_a_warning(installed, tmp_path):
    broken = tmp_path / "broken_site"
    (broken / "broken_plugin").mkdir(parents=True)
    (broken / "broken_plugin" / "__init__.py").write_text("raise RuntimeError('this plugin is broken')\n")
    dist = broken / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[corrbench]\nbroken = broken_plugin\n")
    out = _cli(f"{installed}:{broken}", "list", "methods")
    assert out.returncode == 0
    assert "broken" in out.stderr and "this plugin is broken" in out.stderr
    assert "grey" in out.stdout and "dsift" in out.stdout
    strict = _cli(f"{installed}:{broken}", "list", env_extra={"CORRBENCH_STRICT_PLUGINS": "1"})
    assert strict.returncode != 0 and "this plugin is broken" in strict.stderr
