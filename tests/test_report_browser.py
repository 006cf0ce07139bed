"""The HTML report in a real browser: headless Chromium renders it to a PNG that is not blank, and its DOM
(after parsing and layout) holds every section and decoded images.

Skipped, with the reason, where no Chromium is installed (.ci/run installs it where apt-get exists).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

#: read when a command runs, so the session's isolated data and cache folders (conftest) are used
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
SECTIONS = ("headline", "curves", "categories", "difficulty", "cost", "galleries", "plugin-figures", "settings")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


pytestmark = pytest.mark.skipif(browser() is None, reason="no headless Chromium installed (chromium, chromium-browser "
                                                          "or google-chrome on PATH); .ci/run installs it with apt-get")


def corrbench(*args) -> None:
    res = subprocess.run([sys.executable, "-m", "corrbench", *map(str, args)], capture_output=True, text=True,
                         env={**os.environ, **THREADS}, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def chromium(*args, profile) -> subprocess.CompletedProcess:
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
    cmd = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={profile}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    corrbench("run", "--limit", 6, "--out", tmp / "run", "-q")
    corrbench("report", tmp / "run", "--html", tmp / "report.html", "-q")
    return tmp / "report.html"


def test_screenshot_is_not_blank(page, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,4000", page.as_uri(), profile=tmp_path / "profile")
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (4000, 1280)
    # a blank or failed page is one flat colour; the report has text, charts and photos all the way down
    assert img.std() > 20, f"pixel standard deviation {img.std():.1f}: the page looks blank"
    for band in np.array_split(img, 4):  # every quarter of the first 4000 px has content, not only the top
        assert (band < 200).mean() > 0.01


def test_dom_has_every_section_and_decoded_images(page, tmp_path):
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    ids = set(re.findall(r'<section id="([\w-]+)"', dom))
    assert set(SECTIONS) <= ids, set(SECTIONS) - ids
    assert len(re.findall(r'<img [^>]*src="data:image/(?:png|jpeg);base64,', dom)) >= 5
    assert re.search(r'<tr data-run="[^"]+" data-method="dsift">', dom)
