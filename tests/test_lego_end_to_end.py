"""End to end on a real scene: `sparsefusion-tiny` trained on 3 lego views through nerfstudio's trainer.

The field starts as fog (σ ≈ 1 everywhere in the 8-unit box, albedo ≈ 0.5), so every render begins
as a uniform grey. Training must fit the input views (their masked PSNR rises), turn what the
held-out views see of the background black (their unmasked PSNR, render against the image on
black, rises) and lower the training loss; it must also write a checkpoint.

Held-out masked PSNR (the paper's protocol) is not asserted to rise: fog times the ground-truth
mask is a grey object with a perfect silhouette, a strong guess in PSNR terms, and a plain 3-view
NeRF (step A, no diffusion teacher) overfits its inputs and stays below it on held-out views
(benchmarks/lego_sparse_views.py, views 0/16/33, all 47 held-out views: 16.7 dB at
initialisation, 14.4 dB after 1000 iterations). The test sizes (quarter-resolution cameras,
256 rays, 16 + 16 samples) keep it well under two minutes on two busy CPU cores.
"""

from __future__ import annotations

import statistics
from typing import Dict, List, Sequence, Tuple

import pytest
import torch

from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.models.base_model import Model
from nerfstudio.pipelines.base_pipeline import Pipeline

from sparsefusion_ns.metrics import view_metrics
from tests.tiny_training import tiny_trainer_config
from tests.torch_threads import torch_threads

INPUT_VIEWS = (0, 16, 33)
"""lego_dev frames at azimuths ≈ 91°, 187°, 312° (elevations 17°, 37°, 52°)."""
HELD_OUT_FRAMES = (4, 13, 27, 44)
"""Held-out frames around the object: azimuths ≈ 41°, −57°, 98°, −150°."""
ITERATIONS = 400
RAYS_PER_BATCH = 256
SAMPLES_PER_RAY = 16
"""Stratified samples, and as many importance samples, per ray."""


@pytest.fixture
def one_thread():
    """One intra-op thread. On a shared 2-core machine a second thread waits on busy cores: measured
    with benchmarks/bench_iteration_speed.py, 2 threads were 1.7× faster than 1 when the machine was
    idle but 2.3–13× slower under other agents' load; one thread bounds the worst case."""
    with torch_threads(1):
        yield


def mean_view_metrics(model: Model, dataset: InputDataset, positions: Sequence[int]) -> Dict[str, float]:
    """Means over the dataset's views at `positions` of masked and unmasked PSNR, rendered from their cameras."""
    model.eval()
    values: Dict[str, List[float]] = {"psnr_masked": [], "psnr": []}
    with torch.no_grad():
        for position in positions:
            outputs = model.get_outputs_for_camera(dataset.cameras[position : position + 1])
            data = dataset[position]
            rgb, image, mask = (t.permute(2, 0, 1) for t in (outputs["rgb"], data["image"], data["fg_mask"]))
            values["psnr_masked"].append(view_metrics(rgb, image, mask=mask, masked=True)["psnr"])
            values["psnr"].append(view_metrics(rgb, image, masked=False)["psnr"])
    model.train()
    return {key: statistics.fmean(series) for key, series in values.items()}


def input_and_held_out_metrics(pipeline: Pipeline) -> Tuple[Dict[str, float], Dict[str, float]]:
    """`mean_view_metrics` of the input views and of `HELD_OUT_FRAMES`."""
    datamanager = pipeline.datamanager
    held_out = [datamanager.eval_dataset.metadata["frame_indices"].index(frame) for frame in HELD_OUT_FRAMES]
    inputs = range(len(datamanager.train_dataset))
    return (
        mean_view_metrics(pipeline.model, datamanager.train_dataset, inputs),
        mean_view_metrics(pipeline.model, datamanager.eval_dataset, held_out),
    )


@pytest.mark.slow
def test_three_lego_views_fit_the_inputs_and_improve_held_out_views(shared_dir, tmp_path, one_thread):
    scene = shared_dir / "data" / "lego_dev"
    config = tiny_trainer_config(scene, tmp_path, iterations=ITERATIONS, input_views=INPUT_VIEWS)
    config.pipeline.datamanager.camera_res_scale_factor = 0.25  # 200² views → 50² cameras
    config.pipeline.datamanager.train_num_rays_per_batch = RAYS_PER_BATCH
    config.pipeline.model.num_uniform_samples = SAMPLES_PER_RAY
    config.pipeline.model.num_importance_samples = SAMPLES_PER_RAY
    config.pipeline.model.predict_normals = False
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()

    losses: List[float] = []
    train_iteration = trainer.train_iteration

    def recording_train_iteration(step: int):
        loss, loss_dict, metrics_dict = train_iteration(step)
        losses.append(float(loss))
        return loss, loss_dict, metrics_dict

    trainer.train_iteration = recording_train_iteration
    inputs_before, held_out_before = input_and_held_out_metrics(trainer.pipeline)
    trainer.train()
    inputs_after, held_out_after = input_and_held_out_metrics(trainer.pipeline)

    assert len(losses) == ITERATIONS
    assert list(config.get_checkpoint_dir().glob("step-*.ckpt")), "training wrote no checkpoint"
    # Measured with these settings (one thread, torch 2.14.1, the suite's seed 0); in brackets, the
    # same run as a standalone script with torch seeds 0–3: training loss, mean of the first vs the
    # last 10 iterations, 0.93 → 0.031 (last/first 0.03–0.69: the fog clears abruptly after ~230
    # iterations for seeds 0 and 1, not within 400 for seeds 2 and 3); masked PSNR of the input
    # views 16.99 → 23.18 dB (+6.1 and +9.2 for seeds 0 and 2); unmasked PSNR of the held-out views
    # 7.53 → 13.05 dB (+3.8 to +5.8). Held-out masked PSNR fell, 17.70 → 13.54 dB (module
    # docstring). Each bound below is inside the worst measured value.
    first, last = statistics.fmean(losses[:10]), statistics.fmean(losses[-10:])
    assert last < 0.8 * first, (first, last)
    assert inputs_after["psnr_masked"] > inputs_before["psnr_masked"] + 3.0, (inputs_before, inputs_after)
    assert held_out_after["psnr"] > held_out_before["psnr"] + 2.5, (held_out_before, held_out_after)
