"""The repository root for tests at any folder depth: `from tests.paths import REPO` (never `parents[N]`)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
