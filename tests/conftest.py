"""Shared pytest fixtures.

The tests that train through nerfstudio's trainer on a demo scene share ``scene`` (the 12-view, 32²
demo scene), ``teacher_folder`` (a random ``Teacher.tiny`` saved as a teacher folder) and
``one_torch_thread``, all made once per module. A module that trains marks itself with
``pytestmark = pytest.mark.usefixtures("one_torch_thread")``: one torch thread for the whole module,
set before its runs, so every run uses the same float summation order (on a small shared CPU,
competing OpenMP threads also make every step many times slower).

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


@pytest.fixture(scope="module")
def one_torch_thread():
    from tests.torch_threads import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from tests.scenes import demo_scene

    return demo_scene(tmp_path_factory.mktemp("scene"), num_views=12, resolution=32)


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory) -> Path:
    from sparsefusion_ns.teacher.bundle import Teacher

    return Teacher.tiny(seed=0).save_pretrained(tmp_path_factory.mktemp("teacher") / "tiny_teacher")
