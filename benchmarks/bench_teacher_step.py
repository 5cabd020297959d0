"""Seconds per joint teacher-training step (EFT + VLDM forward, backward, Adam) for candidate sizes.

Measures what ``docs/mini_teacher.md`` uses to size the ``mini`` teacher: for each candidate
architecture, the mean wall time of training steps on real examples of a CO3D-format category
(after warm-up steps), with the same example stream for every candidate.

    python benchmarks/bench_teacher_step.py --root data/synthetic --category critter --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from sparsefusion_ns.teacher.bundle import TeacherConfig
from sparsefusion_ns.teacher_training.config import DataConfig, LossConfig, ViewSamplingConfig
from sparsefusion_ns.teacher_training.datasets import QueryContextDataset, SampleKey
from sparsefusion_ns.teacher_training.losses import draw_diffusion_inputs
from sparsefusion_ns.teacher_training.model import TeacherTrainingModel
from sparsefusion_ns.teacher_training.scenes import Co3dScenes


def candidates() -> dict:
    """name -> (architecture, noisy copies per example): the rows of docs/mini_teacher.md."""
    mini = TeacherConfig.mini()

    def eft(width: int, points: int) -> TeacherConfig:
        return replace(mini, eft=replace(mini.eft, d_model=width, ff=width, n_points_per_ray=points),
                       unet=replace(mini.unet, cond_channels=width))  # fmt: skip

    return {
        "EFT 128, 12 points, 4 copies": (eft(128, 12), 4),
        "EFT 128, 8 points, 4 copies": (eft(128, 8), 4),
        "EFT 64, 12 points, 4 copies": (eft(64, 12), 4),
        "mini (EFT 64, 8 points), 6 copies": (mini, 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--category", default="critter")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []  # one record per candidate, printed as JSON lines
    for name, (config, repeats) in candidates().items():
        scenes = Co3dScenes(DataConfig(root=args.root, categories=(args.category,)), config.eft.image_size)
        dataset = QueryContextDataset(scenes, ViewSamplingConfig(), seed=0)
        grid = config.eft.grid_size
        torch.manual_seed(0)
        model = TeacherTrainingModel(config, "joint", LossConfig(diffusion_repeats=repeats))
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        seconds = []
        for position in range(args.warmup + args.steps):
            example = dataset[SampleKey(scene=position % len(scenes), position=position)]
            latent = torch.randn(config.vae.latent_channels, grid, grid)  # the VAE is not timed
            draws = draw_diffusion_inputs(repeats, tuple(latent.shape), 0.999, 0.1,
                                          torch.Generator().manual_seed(position))  # fmt: skip
            started = time.perf_counter()
            losses = model(example, latent, draws)
            losses["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if position >= args.warmup:
                seconds.append(time.perf_counter() - started)
        counts = {"eft": sum(p.numel() for p in model.eft.parameters() if p.requires_grad),
                  "unet": sum(p.numel() for p in model.unet.parameters())}  # fmt: skip
        record = {"candidate": name, "repeats": repeats, "seconds_per_step": sum(seconds) / len(seconds),
                  "parameters": counts}  # fmt: skip
        results.append(record)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
