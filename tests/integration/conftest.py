"""Fixtures of the browser tests (``browser.py``): one Chromium binary, a fresh page each."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import Browser, find_chromium


@pytest.fixture(scope="session")
def chromium() -> str:
    return find_chromium()


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    b = Browser(chromium, tmp_path / "chromium")
    yield b
    b.close()
    shutil.rmtree(tmp_path / "chromium", ignore_errors=True)
