"""Access to the public atproto interop test vectors.

They live in ``shared/interop/`` beside the checkout (see its README); tests
read them from there rather than keeping copies in the repository.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

INTEROP_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "interop"


def interop_path(relative: str) -> Path:
    """Path of one interop file; skips the test run loudly if the folder is absent."""
    path = INTEROP_DIR / relative
    if not path.exists():
        pytest.fail(f"interop vectors not found at {path} (shared/ must sit beside the checkout)")
    return path


def read_cases(relative: str) -> list[tuple[int, str]]:
    """(line number, case) for every case line of a ``*.txt`` vector file, untrimmed."""
    with open(interop_path(relative), encoding="utf-8", newline="") as f:
        lines = [line.removesuffix("\r") for line in f.read().split("\n")]
    return [(n, line) for n, line in enumerate(lines, start=1) if line and not line.startswith("#")]


def load_json(relative: str) -> Any:
    return json.loads(interop_path(relative).read_text(encoding="utf-8"))


def b64decode(text: str) -> bytes:
    """Standard base64 without padding, as the vectors write it."""
    return base64.b64decode(text + "=" * (-len(text) % 4))
