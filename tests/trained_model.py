"""A `sparsefusion-tiny` checkpoint trained once per test session, for tests that need a trained run.

`train_tiny_model(folder)` writes the demo scene into ``folder``, trains `sparsefusion-tiny` on three
of its views with nerfstudio's own trainer (in-process) and returns the run's ``config.yml``, which
`eval_setup`, `ns-export` and `sf-export-density-mesh` load. `session_trained_model(tmp_path_factory)`
does it once per pytest session and hands every caller the same run; use it from a session fixture:

    @pytest.fixture(scope="session")
    def trained_config(tmp_path_factory) -> Path:
        return session_trained_model(tmp_path_factory)

The run is smaller than `sparsefusion-tiny` (fewer rays and samples, a larger learning rate) so it
trains in seconds on a CPU; after it the density is low in empty space and high on the object, the
initial density blob at the centre still the densest part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

from tests.scenes import demo_scene
from tests.tiny_training import tiny_trainer_config, train
from tests.torch_threads import torch_threads


@dataclass(frozen=True)
class QuickTraining:
    """Sizes of the session's training run."""

    iterations: int = 60
    """Optimisation steps."""
    rays_per_batch: int = 256
    """Training rays per step."""
    samples_per_ray: int = 16
    """Stratified samples per ray, and as many importance samples."""
    learning_rate: float = 1e-2
    """Adam learning rate of the hash grid and the MLP (the paper's are 5e-3 and 5e-4)."""
    num_views: int = 12
    """Views of the demo scene (three of them are the input views)."""
    resolution: int = 32
    """Width and height of the demo scene's images."""
    input_views: Tuple[int, ...] = (0, 4, 8)
    """Input views (the train split)."""


def train_tiny_model(folder: Path, settings: QuickTraining = QuickTraining()) -> Path:
    """Train on the demo scene written into ``folder``; returns the run's config.yml.

    Torch runs single-threaded meanwhile: on a small shared CPU, OpenMP threads competing with other
    processes make every step many times slower."""
    scene = demo_scene(folder / "scene", num_views=settings.num_views, resolution=settings.resolution)
    config = tiny_trainer_config(scene, folder / "outputs", settings.iterations, input_views=settings.input_views)
    config.pipeline.datamanager.train_num_rays_per_batch = settings.rays_per_batch
    config.pipeline.model.num_uniform_samples = settings.samples_per_ray
    config.pipeline.model.num_importance_samples = settings.samples_per_ray
    for group in config.optimizers.values():
        group["optimizer"].lr = settings.learning_rate
    with torch_threads(1):
        train(config)
    return config.get_base_dir() / "config.yml"


_SESSION_RUNS: Dict[Path, Path] = {}


def session_trained_model(tmp_path_factory) -> Path:
    """config.yml of a run trained on first call and shared by every later call in this pytest session."""
    session = tmp_path_factory.getbasetemp()
    if session not in _SESSION_RUNS:
        _SESSION_RUNS[session] = train_tiny_model(tmp_path_factory.mktemp("trained_tiny_model"))
    return _SESSION_RUNS[session]
