"""Training iterations per second of ``sparsefusion-tiny``, the paper's ``sparsefusion`` and nerfstudio's ``nerfacto`` on the CPU.

Not a test. Run with::

    python benchmarks/bench_iteration_speed.py [--rays 4096 512] [--iterations 6] [--warmup 2]
        [--methods sparsefusion-tiny sparsefusion] [--novel-resolution 128]
        [--scene PATH | --scene demo] [--threads N] [--profile]

Methods: ``sparsefusion-tiny`` (8 levels, 2^14 table, 64 samples per ray) and the paper config
``sparsefusion`` (its field and 64 + 64 samples per ray), each against nerfacto at the same rays
per batch. Step (B)'s render: for each SparseFusion config, one novel view of
``--novel-resolution``² rays (the authors' 128²; a training camera rescaled to that size) rendered
with gradients, backward and optimiser step, without the teacher: the field-and-render part of
step (B) that every distillation iteration adds to step (A). The teacher's part is timed by
``benchmarks/bench_teacher_step.py`` and ``benchmarks/gpu_check.py``; together they give the whole
iteration's budget: field (A), render (B), teacher (B).

What is timed: one training iteration as nerfstudio's ``Trainer.train_iteration`` runs it on the
CPU (where the trainer turns mixed precision off, so float32): the before-iteration callbacks,
``pipeline.get_train_loss_dict`` (ray batch from the datamanager, forward, losses), the sum of
the losses, ``backward``, every optimizer's ``step`` and scheduler's ``step``, and the
after-iteration callbacks. Our loop replicates that sequence in-process (no viewer, writer or
checkpoints), so both methods pay exactly the same framework overhead.

Fairness: both methods read the same scene through the same datamanager (the ``sparse-views``
dataparser and the masked dataset, 3 input views, half-resolution cameras) and draw the same
number of rays per batch. nerfacto keeps its own model and optimizer settings, with its hash grid
and MLPs set to ``implementation="torch"`` (the benchmark checks no tiny-cuda-nn module was built).
nerfacto's model constructs torchmetrics' ``LearnedPerceptualImagePatchSimilarity`` in
``populate_modules``, which downloads AlexNet weights; this benchmark replaces that class by an
offline stub while nerfacto is built (LPIPS is only an eval metric; training never calls it).

On a shared machine, load from other processes skews whichever method happens to run during a
spike, so the methods are timed in alternating blocks (``--rounds``) and the table reports both
the mean and the median seconds per iteration. ``--profile`` adds a ``torch.profiler`` table
(top operators by self CPU time) of a few iterations of each method.

Threads: on a small machine shared with other busy processes, torch's intra-op threads wait on one
another. Measured on a 2-core machine, sparsefusion-tiny at 512 rays: at load ≈ 1.2, 2 threads ran
1.7× faster than 1; at load 2–4, 2.3–4× slower; at load ≈ 9, 13× slower. Pass ``--threads 1``
on a busy machine; elsewhere the default uses the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple
from unittest import mock

import torch
from torch import nn

from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENE = REPO_ROOT.parent / "shared" / "data" / "lego_dev"
INPUT_VIEWS = (0, 16, 33)
"""Input views of lego_dev (azimuths ≈ 91°, 187°, 312°); with a demo scene, the first three frames."""


class OfflineLPIPSStub(nn.Module):
    """Stands in for torchmetrics' LPIPS (which downloads AlexNet) while nerfacto is benchmarked."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, *args, **kwargs):
        raise RuntimeError("LPIPS is stubbed out by bench_iteration_speed.py: nerfacto eval metrics are unavailable.")


@contextlib.contextmanager
def lpips_stubbed() -> Iterator[None]:
    """Replace ``torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity`` inside the block only."""
    with mock.patch("torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity", OfflineLPIPSStub):
        yield


def sparsefusion_on_benchmark_data(method: str, scene: Path, rays: int, input_views: Tuple[int, ...]) -> TrainerConfig:
    """The registered SparseFusion ``method`` (its field and sampling) on the benchmark's data and rays."""
    from sparsefusion_ns.plugin.method_configs import sparsefusion_config, sparsefusion_tiny_config

    config = {"sparsefusion-tiny": sparsefusion_tiny_config, "sparsefusion": sparsefusion_config}[method]()
    datamanager = config.pipeline.datamanager
    datamanager.data = scene
    datamanager.dataparser.input_views = input_views
    datamanager.train_num_rays_per_batch = rays
    return config


SPARSEFUSION_METHODS = ("sparsefusion-tiny", "sparsefusion")
"""The SparseFusion methods this benchmark can time."""


def nerfacto_on_same_data(sparsefusion: TrainerConfig) -> TrainerConfig:
    """nerfstudio's registered nerfacto (model, optimizers, schedulers) reading our datamanager."""
    from nerfstudio.configs.method_configs import method_configs

    config = copy.deepcopy(method_configs["nerfacto"])
    config.machine.device_type = "cpu"
    config.mixed_precision = False  # what nerfstudio's Trainer does on the CPU anyway
    config.pipeline.datamanager = copy.deepcopy(sparsefusion.pipeline.datamanager)
    config.pipeline.model.implementation = "torch"
    return config


@dataclass
class Contender:
    """One method set up for training, with its per-iteration timings."""

    name: str
    rays: int
    pipeline: Pipeline
    step: Callable[[int], float]
    seconds: List[float] = field(default_factory=list)
    losses: List[float] = field(default_factory=list)
    novel_view: Callable[[], None] | None = None
    """Step (B)'s render: one novel view with gradients, backward and optimiser step (SparseFusion only)."""
    novel_seconds: List[float] = field(default_factory=list)


def build(name: str, config: TrainerConfig) -> Contender:
    """Set up the pipeline, optimizers and callbacks as nerfstudio's Trainer does."""
    torch.manual_seed(0)
    pipeline = config.pipeline.setup(device="cpu", test_mode="val", world_size=1, local_rank=0)
    optimizers = Optimizers(config.optimizers, pipeline.get_param_groups())
    callbacks = pipeline.get_training_callbacks(
        TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=None, pipeline=pipeline, trainer=None)
    )
    pipeline.train()

    def step(index: int) -> float:
        for callback in callbacks:
            callback.run_callback_at_location(index, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        optimizers.zero_grad_all()
        _, loss_dict, _ = pipeline.get_train_loss_dict(step=index)
        loss = sum(loss_dict.values())
        loss.backward()
        optimizers.optimizer_step_all()
        for scheduler in optimizers.schedulers.values():
            scheduler.step()
        for callback in callbacks:
            callback.run_callback_at_location(index, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        return float(loss.detach())

    return Contender(name, config.pipeline.datamanager.train_num_rays_per_batch, pipeline, step)


def attach_novel_view(contender: Contender, config: TrainerConfig, resolution: int) -> None:
    """Give ``contender`` step (B)'s render: a training camera rescaled so its longer side has
    ``resolution`` pixels, rendered by the model's forward with gradients, then backward and a step."""
    pipeline = contender.pipeline
    cameras = copy.deepcopy(pipeline.datamanager.train_dataset.cameras[0:1])
    cameras.rescale_output_resolution(resolution / max(int(cameras.height), int(cameras.width)))
    rays = cameras.generate_rays(camera_indices=0).flatten().to(pipeline.device)
    optimizers = Optimizers(config.optimizers, pipeline.get_param_groups())

    def novel_view() -> None:
        optimizers.zero_grad_all()
        outputs = pipeline.model(rays)
        loss = outputs["rgb"].mean() + outputs["accumulation"].mean()
        loss.backward()
        optimizers.optimizer_step_all()

    contender.novel_view = novel_view


def check_no_tcnn(model: nn.Module) -> None:
    built = [name for name, module in model.named_modules() if getattr(module, "tcnn_encoding", None) is not None]
    if built:
        raise RuntimeError(f"nerfacto built tiny-cuda-nn modules {built}; this benchmark compares torch kernels.")


def run_block(contender: Contender, first_step: int, count: int, record: bool) -> None:
    for index in range(first_step, first_step + count):
        start = time.perf_counter()
        loss = contender.step(index)
        elapsed = time.perf_counter() - start
        if record:
            contender.seconds.append(elapsed)
            contender.losses.append(loss)


def profile(contender: Contender, first_step: int, count: int, rows: int = 15) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run_block(contender, first_step, count, record=False)
    print(f"\n--- torch.profiler: {contender.name}, {contender.rays} rays, {count} iterations ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))


def demo_scene(folder: Path) -> Path:
    from sparsefusion_ns.scripts.make_demo_scene import DemoSceneConfig, make_demo_scene

    return make_demo_scene(DemoSceneConfig(output=folder / "scene", num_views=24, resolution=96))


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rays", type=int, nargs="+", default=[4096, 512], help="rays per batch to compare at")
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations per method and ray count")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (allocator, oneDNN set-up)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timing blocks the iterations are split in")
    parser.add_argument("--scene", default=str(DEFAULT_SCENE), help="scene folder, or 'demo' to generate one")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler tables")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=SPARSEFUSION_METHODS,
        default=list(SPARSEFUSION_METHODS),
        help="SparseFusion configs to compare with nerfacto (default: both)",
    )
    parser.add_argument(
        "--novel-resolution",
        type=int,
        default=128,
        help="side of step (B)'s novel-view render timed per SparseFusion config (default 128; 0: skip)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from nerfstudio.utils.external import TCNN_EXISTS

    with tempfile.TemporaryDirectory() as tmp:
        scene = demo_scene(Path(tmp)) if args.scene == "demo" else Path(args.scene)
        if not scene.exists():
            raise SystemExit(f"Scene {scene} does not exist; pass --scene PATH or --scene demo.")
        input_views = INPUT_VIEWS if args.scene != "demo" else (0, 1, 2)
        print(
            f"scene {scene}, input views {input_views}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, tinycudann importable: {TCNN_EXISTS}"
        )
        print(
            "nerfacto: implementation='torch'; torchmetrics LPIPS replaced by an offline stub "
            "(only eval metrics use it)"
        )
        print(f"load average before: {load_average()}")

        results: List[Contender] = []
        for rays in args.rays:
            ours_list = []
            for method in args.methods:
                ours_config = sparsefusion_on_benchmark_data(method, scene, rays, input_views)
                ours = build(method, ours_config)
                if args.novel_resolution > 0:
                    attach_novel_view(ours, ours_config, args.novel_resolution)
                ours_list.append(ours)
            with lpips_stubbed():
                nerfacto = build("nerfacto (torch)", nerfacto_on_same_data(ours_config))
            check_no_tcnn(nerfacto.pipeline.model)
            contenders = (*ours_list, nerfacto)
            for contender in contenders:
                run_block(contender, 0, args.warmup, record=False)
                if contender.novel_view is not None:
                    contender.novel_view()  # warm-up
            per_round = max(1, args.iterations // args.rounds)
            step = args.warmup
            while len(nerfacto.seconds) < args.iterations:
                count = min(per_round, args.iterations - len(nerfacto.seconds))
                for contender in contenders:
                    run_block(contender, step, count, record=True)
                    for _ in range(count if contender.novel_view is not None else 0):
                        start = time.perf_counter()
                        contender.novel_view()
                        contender.novel_seconds.append(time.perf_counter() - start)
                step += count
            if args.profile:
                for contender in contenders:
                    profile(contender, step, 2)
            results.extend(contenders)
            print(f"  done {rays} rays, load average {load_average()}")

    print(f"load average after: {load_average()}\n")
    header = (
        f"{'method':<20} {'rays/batch':>10} {'s/it mean':>10} {'s/it median':>12} {'it/s':>7} "
        f"{'ours/nerfacto it/s':>19} {'step B render s':>16} {'A + B render s':>15}"
    )
    print(header)
    print("-" * len(header))
    by_rays: Dict[int, Dict[str, float]] = {}
    for contender in results:
        mean = statistics.fmean(contender.seconds)
        by_rays.setdefault(contender.rays, {})[contender.name] = mean
    for contender in results:
        mean = statistics.fmean(contender.seconds)
        median = statistics.median(contender.seconds)
        ratio = novel = both = ""
        if contender.name in SPARSEFUSION_METHODS:
            ratio = f"{by_rays[contender.rays]['nerfacto (torch)'] / mean:.2f}"
        if contender.novel_seconds:
            novel_mean = statistics.fmean(contender.novel_seconds)
            novel, both = f"{novel_mean:.3f}", f"{mean + novel_mean:.3f}"
        print(
            f"{contender.name:<20} {contender.rays:>10} {mean:>10.3f} {median:>12.3f} {1 / mean:>7.2f} {ratio:>19} "
            f"{novel:>16} {both:>15}"
        )
    print(
        "\n(timed: callbacks + get_train_loss_dict + backward + optimizer/scheduler steps, "
        f"{args.iterations} iterations after {args.warmup} warm-up, float32 CPU; step B render: one "
        f"{args.novel_resolution}² novel view with gradients, backward and optimiser step, no teacher)"
    )


if __name__ == "__main__":
    main()
