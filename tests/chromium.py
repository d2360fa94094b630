"""Shared set-up of the browser tests: Debian's Chromium driven by playwright, and a signed demo site.

CI must run them (.ci/run installs chromium); a developer machine without it skips them. The
`browser` fixture itself is in conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgproxy.html import WIDTH_STEPS

from .conftest import LiveServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--no-first-run",
]
WAIT_MS = 90_000  # generous: on a busy machine the server renders each lazy image slowly


def marks(timeout: int = 180) -> list[pytest.MarkDecorator]:
    """A browser test module's `pytestmark`: its time bound, and the skip when Chromium is absent."""
    return [
        pytest.mark.timeout(timeout),
        pytest.mark.skipif(
            not Path(CHROMIUM).exists() and not os.environ.get("CI"),
            reason="Debian's chromium is not installed (.ci/run installs it)",
        ),
    ]


def signed_site(workdir: Path, key: str, **sections: dict) -> Iterator[LiveServer]:
    """A server drawing the demo samples, with a signing key and the lazyloader's widths unsigned
    (as the README says to set it up), plus `sections` of config; stopped when the generator closes."""
    settings = {
        "sources": {"local": {"root": str(workdir / "images"), "generate_demo": True}},
        "security": {"key": key, "allowed_widths": list(WIDTH_STEPS)},
        **sections,
    }
    server = LiveServer(workdir, settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def shots_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $IMGPROXY_SHOTS when set (to look at them), else pytest's tmp_path."""
    folder = Path(os.environ.get("IMGPROXY_SHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
