"""Novel-view quality of SparseFusion's field trained on 3 views of the Blender lego scene.

Not a test. Run with::

    python benchmarks/lego_sparse_views.py [--method sparsefusion-tiny] [--iterations 300]
        [--input-views 0 16 33 | --num-input-views 3 --seed 0] [--scene PATH] [--output FILE.json]
        [--eval-at-init] [--eval-stride K] [--threads N]

Trains the method (input-view step A only: there is no diffusion teacher here, so this is the
plain sparse-view NeRF baseline) with nerfstudio's ``Trainer`` in-process, then renders every
held-out view with ``model.get_outputs_for_camera`` and scores it with the project's metrics
(``sparsefusion_ns.metrics.view_metrics``: scikit-image PSNR and SSIM), twice:

- masked, the paper's protocol: prediction and ground truth both multiplied by the foreground mask;
- unmasked: the render against the ground truth as the dataset serves it (the image multiplied by
  its mask, i.e. on black, the background the field is trained to render).

Held-out views are rendered at the resolution of the datamanager's eval cameras (the method's
``camera_res_scale_factor``, 0.5: lego_dev's 200² views render at 100²), the same scale as the
training rays. Normals are not rendered (``predict_normals=False``): no metric uses them.

The default input views 0, 16, 33 of lego_dev lie at azimuths ≈ 91°, 187°, 312° and elevations
≈ 17°, 37°, 52°: roughly evenly around the object. Writes a JSON with the settings, the training
time, the per-view metrics (plus the IoU of the rendered silhouette, opacity > 0.5, with the
mask: a measure of geometry alone) and their means; ``--eval-at-init`` adds the same for the
untrained field (fog: σ ≈ 1 everywhere, albedo ≈ 0.5), the baseline the training must beat.

On a small CPU shared with other busy processes pass ``--threads 1`` (see bench_iteration_speed.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline

from sparsefusion_ns.metrics import view_metrics
from sparsefusion_ns.plugin.method_configs import sparsefusion_config, sparsefusion_tiny_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENE = REPO_ROOT.parent / "shared" / "data" / "lego_dev"
DEFAULT_INPUT_VIEWS = (0, 16, 33)
METHODS = {"sparsefusion-tiny": sparsefusion_tiny_config, "sparsefusion": sparsefusion_config}


def build_config(args: argparse.Namespace, output_dir: Path) -> TrainerConfig:
    config = METHODS[args.method]()
    datamanager = config.pipeline.datamanager
    datamanager.data = Path(args.scene)
    if args.num_input_views is not None:
        datamanager.dataparser.input_views = ()
        datamanager.dataparser.num_input_views = args.num_input_views
        datamanager.dataparser.selection_seed = args.seed
    else:
        datamanager.dataparser.input_views = tuple(args.input_views)
    if args.rays is not None:
        datamanager.train_num_rays_per_batch = args.rays
    config.pipeline.model.predict_normals = False
    config.max_num_iterations = args.iterations
    config.steps_per_save = args.iterations
    # No evaluation during training: this script evaluates every held-out view afterwards.
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
    config.output_dir = output_dir
    config.vis = "tensorboard"
    config.set_timestamp()
    return config


def silhouette_iou(accumulation: Float[Tensor, "h w 1"], fg_mask: Float[Tensor, "h w 1"]) -> float:
    """IoU of the rendered silhouette (opacity Ô > 0.5) and the foreground mask M > 0.5: geometry alone."""
    rendered, true = accumulation > 0.5, fg_mask > 0.5
    return float((rendered & true).sum() / (rendered | true).sum().clamp_min(1))


@torch.no_grad()
def evaluate_held_out(pipeline: Pipeline, stride: int = 1) -> List[Dict[str, float]]:
    """Masked and unmasked PSNR/SSIM and silhouette IoU of every `stride`-th held-out view, rendered
    from its camera."""
    model = pipeline.model
    model.eval()
    dataset = pipeline.datamanager.eval_dataset
    frame_indices = dataset.metadata["frame_indices"]
    per_view = []
    for position, (camera, batch) in enumerate(pipeline.datamanager.fixed_indices_eval_dataloader):
        if position % stride:
            continue
        outputs = model.get_outputs_for_camera(camera)
        rgb = outputs["rgb"].permute(2, 0, 1)
        image = batch["image"].to(rgb.device).permute(2, 0, 1)
        fg_mask = batch["fg_mask"].to(rgb.device).permute(2, 0, 1)
        masked = view_metrics(rgb, image, mask=fg_mask, masked=True)
        unmasked = view_metrics(rgb, image, masked=False)
        per_view.append(
            {
                "frame": int(frame_indices[batch["image_idx"]]),
                "psnr_masked": masked["psnr"],
                "ssim_masked": masked["ssim"],
                "psnr": unmasked["psnr"],
                "ssim": unmasked["ssim"],
                "mask_iou": silhouette_iou(outputs["accumulation"], batch["fg_mask"].to(rgb.device)),
            }
        )
    model.train()
    return per_view


def means(per_view: List[Dict[str, float]]) -> Dict[str, float]:
    return {key: statistics.fmean(view[key] for view in per_view) for key in per_view[0] if key != "frame"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=sorted(METHODS), default="sparsefusion-tiny")
    parser.add_argument("--iterations", type=int, default=300, help="training iterations")
    parser.add_argument("--rays", type=int, default=None, help="rays per batch (default: the method's)")
    parser.add_argument("--scene", default=str(DEFAULT_SCENE), help="scene folder (default: ../shared/data/lego_dev)")
    parser.add_argument("--input-views", type=int, nargs="+", default=list(DEFAULT_INPUT_VIEWS), help="frame indices")
    parser.add_argument("--num-input-views", type=int, default=None, help="draw this many views instead (with --seed)")
    parser.add_argument("--seed", type=int, default=0, help="view-selection and training seed")
    parser.add_argument("--eval-stride", type=int, default=1, help="evaluate every k-th held-out view")
    parser.add_argument("--eval-at-init", action="store_true", help="also evaluate the untrained field")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", default="lego_sparse_views.json", help="JSON file to write")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()}, {torch.get_num_threads()} torch threads")
    # Seeds as ns-train sets them (pixel sampling and stratified samples draw from torch's RNG).
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = build_config(args, Path(tmp))
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        pipeline = trainer.pipeline
        result = {
            "method": args.method,
            "scene": str(args.scene),
            "input_views": list(pipeline.datamanager.train_dataset.metadata["input_view_indices"]),
            "iterations": args.iterations,
            "rays_per_batch": config.pipeline.datamanager.train_num_rays_per_batch,
            "eval_resolution": [
                int(pipeline.datamanager.eval_dataset.cameras.height[0]),
                int(pipeline.datamanager.eval_dataset.cameras.width[0]),
            ],
            "torch_threads": torch.get_num_threads(),
        }
        if args.eval_at_init:
            start = time.perf_counter()
            initial = evaluate_held_out(pipeline, args.eval_stride)
            result["init"] = {"mean": means(initial), "per_view": initial, "seconds": time.perf_counter() - start}
            print(f"untrained field: {result['init']['mean']}")
        start = time.perf_counter()
        trainer.train()
        result["train_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        trained = evaluate_held_out(pipeline, args.eval_stride)
        result["eval_seconds"] = time.perf_counter() - start
        result["mean"] = means(trained)
        result["per_view"] = trained
    result["load_average_end"] = list(os.getloadavg())
    Path(args.output).write_text(json.dumps(result, indent=2))
    mean = result["mean"]
    print(
        f"{args.method}, {args.iterations} iterations ({result['train_seconds']:.0f} s), input views "
        f"{result['input_views']}, {len(trained)} held-out views at {result['eval_resolution']}:\n"
        f"  masked   PSNR {mean['psnr_masked']:.2f} dB  SSIM {mean['ssim_masked']:.4f}\n"
        f"  unmasked PSNR {mean['psnr']:.2f} dB  SSIM {mean['ssim']:.4f}\n"
        f"  silhouette IoU (opacity > 0.5 vs mask) {mean['mask_iou']:.3f}\n"
        f"per-view values in {args.output}"
    )


if __name__ == "__main__":
    main()
