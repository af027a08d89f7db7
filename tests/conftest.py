"""Shared fixtures: where the project and its offline data live."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Nodes cache bases and optimiser states on disk; keep the tests' apart.
os.environ.setdefault("FISH_FL_CACHE", tempfile.mkdtemp(prefix="fish-fl-test-cache-"))
# A node restores its base by writing back only the entries its last mask
# touched; in the tests every restore is checked against the base's fingerprint.
os.environ.setdefault("FISH_FL_CHECK_RESTORE", "1")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The project's root folder (the one holding pyproject.toml)."""
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def shared_data(project_root: Path) -> Path:
    """The offline data sets at ``../shared/data`` from the project root; skips if absent."""
    path = project_root / ".." / "shared" / "data"
    if not path.is_dir():
        pytest.skip("real data not found at ../shared/data (see its README)")
    return path
