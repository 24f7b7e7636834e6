"""Shared test set-up: make tests/ importable for helper modules (cli_helpers, fakes)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
