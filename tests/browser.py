"""Headless Chromium for the tests: open a page at a window size, run a check in it, read the result.

Debian's ``chromium`` package (``.ci/run`` installs it). Without it a test skips on a laptop and
fails in CI. The page's own check script stores a JSON result in ``<body data-check>``, which
``--dump-dom`` prints once the page has loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium() -> str:
    """The browser binary, or skip (fail under CI=true) when there is none."""
    # Debian's package here; GitHub's Ubuntu runners ship Google Chrome, the same engine.
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("Chromium is required in CI: apt-get install chromium (.ci/run does)")
        pytest.skip("Chromium not installed (Debian package chromium)")
    return binary


def run_check(page: Path, check_script: str, width: int = 1280, height: int = 800) -> dict:
    """Load ``page`` (an HTML file) with ``check_script`` appended; the script must put a JSON result
    in ``document.body.dataset.check``; returns it."""
    binary = chromium()
    with tempfile.TemporaryDirectory(prefix="browser-") as folder:
        probe = Path(folder) / page.name
        probe.write_text(
            page.read_text(encoding="utf-8") + f"\n<script>{check_script}</script>\n", encoding="utf-8"
        )
        done = subprocess.run(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={folder}/profile",
                f"--window-size={width},{height}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    match = re.search(r'data-check="([^"]*)"', done.stdout)
    assert match, f"the page's check did not run:\n{done.stderr[-2000:]}"
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
