"""Shared pytest fixtures.

`shared_dir` points at the project's read-only reference folder (`../shared` beside the
repository; override with ``SPARSEFUSION_SHARED_DIR``). Outside CI a missing folder skips the
tests that need it; in CI (``CI=true``) it is an error, so a broken checkout cannot pass silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return Path(os.environ.get("SPARSEFUSION_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared_dir()
    if not (path / "reference").is_dir():
        message = f"reference folder not found at {path} (set SPARSEFUSION_SHARED_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Every test starts from the same global RNG state.

    Thread counts are not set here: the run's ``OMP_NUM_THREADS`` applies, and the modules whose
    timings or float summation order depend on it pin their own count with ``tests.torch_threads``."""
    torch.manual_seed(0)
    yield
