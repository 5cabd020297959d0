"""SparseFusion against its baselines on test scenes of a category, with the ``sparsefusion-mini`` method.

Not a test. For every scene (a test sequence of the category, first N of the ``fewview_test`` set
list's ``test`` split by default) this script:

1. trains **NeRF**: the ``sparsefusion-mini`` field on the V input views alone (no teacher);
2. trains **SparseFusion**: the same method, seed and iterations, distilling the teacher;
3. scores both, and the teacher's two parts alone, on every held-out frame of the co3d protocol
   (32 evenly spaced frames, V input views from the dataparser's seeded permutation, masked PSNR
   and SSIM, LPIPS-VGG when its local weights are given): **EFT** (its feed-forward colour at the
   held-out camera, queried at full image resolution) and **VLDM** (a PLMS sample from pure noise
   conditioned on the EFT features, the authors' 50 steps by default). The code is the package's
   (``sparsefusion_ns.evaluation``), the same as ``sf-eval``'s.

Both trainings go through nerfstudio's trainer in-process (the project's ``SparseFusionTrainer``),
with the seed set as ``ns-train --machine.seed`` sets it; their run folders are ordinary nerfstudio
runs (``config.yml`` + checkpoint), so ``sf-eval``, ``sf-export-density-mesh`` and ``ns-viewer`` work
on them. Nothing is downloaded.

Written to ``--output``:

- ``results.json``: settings, machine, and per scene and method the per-view and mean metrics, the
  wall time (setup, training, evaluation), the seconds per training iteration (SparseFusion: per
  phase) and the teacher's cost (UNet evaluations, VAE calls, EFT queries, teacher seconds); with
  ``--quality-every N``, SparseFusion's time-to-quality curve per scene (``quality_curve``: held-out
  PSNR/SSIM on ``--quality-views`` views every N iterations, next to the UNet evaluations and
  training seconds spent so far; the probes' own time is left out of every timing) and its mean over
  scenes in the summary (``benchmarks/plot_time_to_quality.py`` plots several folders together);
- ``results.md``: mean ± standard deviation over scenes per method, the teacher cost and wall time
  per scene, the schedule, and a per-scene table;
- ``comparison.png``: for the first ``--figure-scenes`` scenes, ``--figure-views`` held-out views
  each, rows of [inputs | NeRF | EFT | VLDM | SparseFusion | ground truth];
- ``scenes/<sequence>/<method>.json`` (one per finished method) and ``runs/`` (the trained runs).

**Resuming.** Rerun the same command after an interruption: finished methods of finished scenes
are read back, a training that did not finish is redone from scratch (so every wall time is one
uninterrupted run). The settings are stored in ``benchmark_settings.json``; a rerun with other
settings is refused (``--overwrite`` starts afresh). More scenes may be added on a rerun. A settings
file written before a setting existed holds the value those runs used: ``schedule authors``, no
quality probes, and the pool aimed through the inputs' mean principal point, so such a comparison
continues with ``--look-at-axes mean_principal_point`` (the current default is refused, named).

**Workers.** ``--workers N`` splits the scenes still to do over N processes (this script again,
each on its own scenes, logging to ``workers/worker_<k>.log``); this process shows their progress
and writes the reports once all have finished. A scene's records are the same whichever process
made them; only the wall times depend on how busy the machine was.

**Schedules.** ``--schedule authors|cached`` picks SparseFusion's distillation schedule
(``--pipeline.model.distillation.schedule``, docs/schedules.md); one output folder per schedule.

Typical commands (2 cores; see results.md for the schedule used)::

    python benchmarks/mini_category_comparison.py --data data/synthetic --category critter \\
        --teacher teachers/critter-mini --num-scenes 10 --output benchmarks/results/critter_v2
    python benchmarks/mini_category_comparison.py --data data/synthetic --category critter \\
        --teacher teachers/critter-mini --num-scenes 10 --num-input-views 3 --output benchmarks/results/critter_v3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, get_args

import numpy as np
import torch
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.data.co3d_annotations import Co3dCategory
from sparsefusion_ns.distillation.callbacks import NovelViewStep
from sparsefusion_ns.distillation.counters import TeacherCost
from sparsefusion_ns.distillation.novel_cameras import LookAtAxes
from sparsefusion_ns.engine.trainer import SparseFusionTrainer, SparseFusionTrainerConfig
from sparsefusion_ns.evaluation.comparison_figure import image_row, stack_rows
from sparsefusion_ns.evaluation.eft_baseline import EFTBaseline
from sparsefusion_ns.evaluation.held_out import (
    METRIC_NAMES,
    HeldOutView,
    ViewRenderer,
    ViewsEvaluation,
    evaluate_views,
    field_renderer,
    held_out_views,
)
from sparsefusion_ns.evaluation.vldm_baseline import AUTHORS_SAMPLING_STEPS, VLDMBaseline
from sparsefusion_ns.metrics import LPIPSConfig, LPIPSWeightsNotFoundError, lpips_or_warn, resolve_lpips_weights
from sparsefusion_ns.plugin.method_configs import sparsefusion_mini_config
from sparsefusion_ns.teacher.bundle import Teacher
from sparsefusion_ns.utils.atomic_files import atomic_path, write_text_atomically
from sparsefusion_ns.utils.output_folders import prepare_output_folder
from sparsefusion_ns.utils.summary import print_summary

METHODS = ("nerf", "eft", "vldm", "sparsefusion")
"""Methods in report and picture order."""
STAGES = ("nerf", "sparsefusion", "eft", "vldm")
"""Order in which a scene's methods run."""
LABELS = {"nerf": "NeRF", "eft": "EFT", "vldm": "VLDM", "sparsefusion": "SparseFusion"}
DESCRIPTIONS = {
    "nerf": "our field on the input views alone (sparsefusion-mini without a teacher)",
    "eft": "the teacher's EFT colour at the held-out camera (feed-forward, full-resolution rays)",
    "vldm": "the teacher's VLDM: PLMS sample from pure noise, conditioned on the EFT features",
    "sparsefusion": "sparsefusion-mini distilling the teacher",
}
LOOK_AT_AXES_WORDS = {
    "mean_principal_point": "rays through their mean principal point (the authors')",
    "optical": "optical axes",
}
"""``Settings.look_at_axes`` in results.md's words."""
SETTINGS_FILE = "benchmark_settings.json"
OWN_FILES = (SETTINGS_FILE, "results.json", "results.md", "comparison.png")
OWN_FOLDERS = ("scenes", "runs", "co3d_cache")
CELL_WIDTH = 96
"""Width in pixels of an image in comparison.png."""
BENIGN_WARNINGS = (
    "Using a non-tuple sequence for multidimensional indexing",  # torch, inside nerfstudio's ray generation
    "Converting a tensor with requires_grad=True to a scalar",  # torch, inside nerfstudio's loss logging
)
"""Warnings nerfstudio's own code raises on every run, silenced to keep the progress display readable."""


@dataclass
class Settings:
    """Everything that determines the results; a resumed run must have the same."""

    data: str
    """Category root (CO3Dv2 layout)."""
    category: str
    """Category name."""
    subset: str
    """Set list of the test sequences."""
    teacher: str
    """Teacher folder (absolute)."""
    num_input_views: int
    """V."""
    iterations: int
    """Training iterations of NeRF and SparseFusion."""
    bootstrap_iterations: int
    """SparseFusion bootstraps from the EFT while step ≤ this."""
    plms_max_steps: int
    """Most PLMS steps of a distillation target."""
    rays_per_batch: int
    """Input-view rays per iteration."""
    render_resolution: int
    """Side of SparseFusion's novel-view renders (upsampled to the teacher's image size)."""
    image_size: int
    """Side of the co3d crops (the teacher's image size)."""
    vldm_steps: int
    """PLMS steps of the VLDM baseline from pure noise."""
    seed: int
    """Seed of both trainings (global generators and the distillation's stream) and of the VLDM noise."""
    use_perceptual_loss: bool
    """Whether SparseFusion's diffusion phase used the LPIPS-VGG loss."""
    lpips_vgg_weights: Optional[str]
    """Local LPIPS-VGG trunk (metric and loss), or None."""
    figure_scenes: int
    """Scenes shown in comparison.png."""
    figure_views: int
    """Held-out views per scene shown in comparison.png."""
    schedule: str = "authors"
    """SparseFusion's distillation schedule (``DistillationConfig.schedule``). Settings files written
    before this field existed are read as ``authors``, what those runs used."""
    quality_every: int = 0
    """SparseFusion's held-out PSNR is probed every this many iterations (0: never)."""
    quality_views: int = 4
    """Held-out views (spread over the sequence) scored by each probe."""
    baselines_from: Optional[str] = None
    """Comparison folder whose NeRF, EFT and VLDM records are reused (``--baselines-from``), or None."""
    look_at_axes: LookAtAxes = "mean_principal_point"
    """Lines the novel-camera pool's look-at point is nearest to (``NovelCameraPoolConfig.look_at_axes``).
    Settings files written before this field existed are read as ``mean_principal_point``, what those
    runs used."""


BASELINE_METHODS = ("nerf", "eft", "vldm")
"""Methods whose results do not depend on SparseFusion's distillation settings."""
DISTILLATION_SETTINGS = (
    "bootstrap_iterations",
    "plms_max_steps",
    "render_resolution",
    "use_perceptual_loss",
    "schedule",
    "quality_every",
    "quality_views",
    "figure_scenes",
    "figure_views",
    "baselines_from",
    "look_at_axes",
)
"""Settings that change SparseFusion's run (or only the reports), never the baselines'."""


SETTINGS_DEFAULTS = {f.name: f.default for f in fields(Settings) if f.default is not MISSING}
"""Settings that older settings files may lack, with the value those runs used."""


def settings_differences(stored: Dict, settings: Settings, ignore: Sequence[str] = ()) -> str:
    """The settings (but those in ``ignore``) whose value in ``stored``, a settings file's contents
    (lacking ones read from :data:`SETTINGS_DEFAULTS`), differs from ``settings``; as
    ``"name: stored value → current value; …"``, or "" if none does."""
    stored = {**SETTINGS_DEFAULTS, **stored}
    current = json.loads(json.dumps(asdict(settings)))  # as a file holds them (tuples become lists)
    return "; ".join(
        f"{key}: {stored.get(key)!r} → {value!r}"
        for key, value in current.items()
        if key not in ignore and stored.get(key) != value
    )


# ----------------------------------------------------------------------------------------- setup
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    defaults = sparsefusion_mini_config()
    distillation = defaults.pipeline.model.distillation
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="category root (CO3Dv2 layout, e.g. data/synthetic)")
    parser.add_argument("--category", default="critter", help="category name (default: critter)")
    parser.add_argument("--teacher", type=Path, required=True, help="teacher folder (e.g. teachers/critter-mini)")
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument("--subset", default="fewview_test", help="set list of the test scenes (default: fewview_test)")
    scenes = parser.add_mutually_exclusive_group()
    scenes.add_argument("--scenes", nargs="+", help="test sequence names (default: the first --num-scenes)")
    scenes.add_argument("--num-scenes", type=int, default=10, help="first N sequences of the test split (default 10)")
    parser.add_argument("--num-input-views", type=int, default=2, help="V input views (default 2)")
    parser.add_argument(
        "--iterations",
        type=int,
        default=defaults.max_num_iterations,
        help=f"training iterations of both methods (default {defaults.max_num_iterations})",
    )
    parser.add_argument(
        "--bootstrap-iterations",
        type=int,
        default=distillation.bootstrap_iterations,
        help=f"SparseFusion bootstraps while step <= this (default {distillation.bootstrap_iterations})",
    )
    parser.add_argument(
        "--plms-max-steps",
        type=int,
        default=distillation.plms_max_steps,
        help=f"most PLMS steps of a distillation target (default {distillation.plms_max_steps})",
    )
    parser.add_argument(
        "--rays",
        type=int,
        default=defaults.pipeline.datamanager.train_num_rays_per_batch,
        help=f"input-view rays per iteration (default {defaults.pipeline.datamanager.train_num_rays_per_batch})",
    )
    parser.add_argument(
        "--vldm-steps",
        type=int,
        default=AUTHORS_SAMPLING_STEPS,
        help=f"PLMS steps of the VLDM baseline (default {AUTHORS_SAMPLING_STEPS}, the authors')",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the trainings and the VLDM noise (default 0)")
    parser.add_argument(
        "--lpips-vgg-weights",
        type=Path,
        default=None,
        help="local VGG-16 trunk (vgg16-397923af.pth) for the LPIPS metric and loss "
        "(default: torchvision's cache, if it holds the file)",
    )
    parser.add_argument(
        "--use-perceptual-loss",
        choices=("auto", "on", "off"),
        default="auto",
        help="SparseFusion's LPIPS loss: auto = on when LPIPS-VGG's weights are found (the paper's)",
    )
    parser.add_argument(
        "--schedule",
        choices=("authors", "cached"),
        default="authors",
        help="SparseFusion's distillation schedule (default authors, the paper's; docs/schedules.md)",
    )
    parser.add_argument(
        "--look-at-axes",
        choices=get_args(LookAtAxes),
        default=distillation.pool.look_at_axes,
        help="lines the novel-camera pool's look-at point is nearest to (default "
        f"{distillation.pool.look_at_axes}; --pipeline.model.distillation.pool.look-at-axes, docs/method.md)",
    )
    parser.add_argument(
        "--quality-every",
        type=int,
        default=0,
        help="probe SparseFusion's held-out PSNR every N iterations for the time-to-quality curve (default 0: off)",
    )
    parser.add_argument(
        "--quality-views", type=int, default=4, help="held-out views scored by each quality probe (default 4)"
    )
    parser.add_argument(
        "--baselines-from",
        type=Path,
        default=None,
        help="reuse the NeRF, EFT and VLDM records of another comparison folder whose baseline settings are the "
        "same (e.g. the authors-schedule run when measuring --schedule cached); only SparseFusion is trained",
    )
    parser.add_argument("--figure-scenes", type=int, default=3, help="scenes in comparison.png (default 3)")
    parser.add_argument("--figure-views", type=int, default=2, help="held-out views per scene in it (default 2)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice; 1 per --workers process)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="run the scenes in N processes side by side, one torch thread each unless --threads says otherwise "
        "(default 1). On 2 cores, --workers 2 gets through ≈ 1.35× more scenes per hour than one 2-thread process",
    )
    parser.add_argument("--worker-scenes", nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--overwrite", action="store_true", help="delete this script's earlier outputs and start afresh"
    )
    return parser.parse_args(argv)


def choose_scenes(args: argparse.Namespace) -> List[str]:
    names = list(Co3dCategory(args.data, args.category).evaluation_frames(args.subset, "test"))
    if args.scenes:
        unknown = [name for name in args.scenes if name not in names]
        if unknown:
            raise SystemExit(
                f"Error: {unknown} are not sequences of the 'test' split of "
                f"{args.data / args.category / 'set_lists' / f'set_lists_{args.subset}.json'} "
                f"(it holds {', '.join(names[:4])}{' ...' if len(names) > 4 else ''})."
            )
        return list(args.scenes)
    if not 1 <= args.num_scenes <= len(names):
        raise SystemExit(f"Error: --num-scenes {args.num_scenes}: the test split has {len(names)} sequences.")
    return names[: args.num_scenes]


def prepare_output(output: Path, settings: Settings, overwrite: bool) -> None:
    """Start, resume (same settings) or refuse; with ``overwrite`` delete this script's outputs first."""
    path = output / SETTINGS_FILE
    if overwrite:
        for name in OWN_FOLDERS:
            shutil.rmtree(output / name, ignore_errors=True)
        prepare_output_folder(output, True, "mini_category_comparison.py --output", own_outputs=OWN_FILES)
    elif path.is_file():
        changed = settings_differences(json.loads(path.read_text()), settings)
        if changed:
            raise SystemExit(
                f"Error: {output} holds a comparison made with other settings (then → now: {changed}). Pass the "
                "same options to continue it, choose another --output, or pass --overwrite to start afresh."
            )
        CONSOLE.print(f"Resuming the comparison in {escape(str(output))}")
        return
    else:
        try:
            prepare_output_folder(output, False, "mini_category_comparison.py --output")
        except OSError as error:
            raise SystemExit(f"Error: {error}") from None
    write_text_atomically(path, json.dumps(asdict(settings), indent=2))


def check_baselines_source(source: Path, settings: Settings) -> None:
    """Refuse a ``--baselines-from`` folder whose baselines were made with other settings."""
    path = source / SETTINGS_FILE
    if not path.is_file():
        raise SystemExit(f"Error: --baselines-from {source}: no {SETTINGS_FILE} there (not a comparison folder).")
    changed = settings_differences(json.loads(path.read_text()), settings, ignore=DISTILLATION_SETTINGS)
    if changed:
        raise SystemExit(
            f"Error: --baselines-from {source}: its NeRF, EFT and VLDM were made with other settings (there → "
            f"here: {changed})."
        )


# ----------------------------------------------------------------------------------------- runs
def run_config(settings: Settings, output: Path, scene: str, method: str) -> SparseFusionTrainerConfig:
    """The ``sparsefusion-mini`` configuration of one scene and method (``nerf`` or ``sparsefusion``)."""
    config = sparsefusion_mini_config()
    datamanager = config.pipeline.datamanager
    datamanager.data = Path(settings.data)
    parser = datamanager.dataparser
    parser.data = Path(settings.data)
    parser.category = settings.category
    parser.subset = settings.subset
    parser.sequence_name = scene
    parser.num_input_views = settings.num_input_views
    parser.image_size = settings.image_size
    parser.cache_dir = output / "co3d_cache"
    datamanager.train_num_rays_per_batch = settings.rays_per_batch
    model = config.pipeline.model
    model.predict_normals = False  # no metric uses them; export renders them anyway
    model.lpips_vgg_weights = Path(settings.lpips_vgg_weights) if settings.lpips_vgg_weights else None
    if method == "sparsefusion":
        model.teacher = Path(settings.teacher)
        distillation = model.distillation
        distillation.seed = settings.seed
        distillation.bootstrap_iterations = settings.bootstrap_iterations
        distillation.plms_max_steps = settings.plms_max_steps
        distillation.render_resolution = settings.render_resolution
        distillation.use_perceptual_loss = settings.use_perceptual_loss
        distillation.perceptual_loss_if_weights_missing = "error"  # decided (and checked) at start-up
        distillation.schedule = settings.schedule  # type: ignore[assignment]  # checked by argparse's choices
        distillation.pool.look_at_axes = settings.look_at_axes
    config.machine.seed = settings.seed
    config.max_num_iterations = settings.iterations
    config.steps_per_save = settings.iterations
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
    config.logging.local_writer.enable = False
    config.vis = "tensorboard"
    config.output_dir = output / "runs"
    config.experiment_name = scene
    config.timestamp = method
    return config


def seed_everything(seed: int) -> None:
    """What ``ns-train`` does with ``--machine.seed`` before it builds the trainer."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainingRecord:
    """A finished training: the trainer and its timings."""

    trainer: SparseFusionTrainer
    setup_seconds: float
    """Building the trainer: data, model, and for SparseFusion the teacher, pool and EFT cache."""
    train_seconds: float
    """The training loop."""
    iteration_seconds: Dict[int, float]
    """Wall time of every iteration (step → seconds), both steps (A, B) and logging included."""
    iteration_cpu_seconds: Dict[int, float]
    """CPU time of this process in every iteration (all its threads): on a machine shared with other
    work, this shows the work when the wall time shows the wait."""


Probe = Callable[[SparseFusionTrainer, int], None]
"""Called after every iteration with the trainer and the step; its time is left out of every timing."""


def train(
    config: SparseFusionTrainerConfig, on_step: Callable[[int], None], probe: Optional[Probe] = None
) -> TrainingRecord:
    """Train ``config`` in-process from scratch (an unfinished earlier run of it is deleted first)."""
    shutil.rmtree(config.get_base_dir(), ignore_errors=True)
    seed_everything(config.machine.seed)
    config.save_config()
    writers = len(writer.EVENT_WRITERS)
    start = time.perf_counter()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    setup_seconds = time.perf_counter() - start
    starts: Dict[int, float] = {}
    cpu_starts: Dict[int, float] = {}
    probe_seconds: Dict[int, float] = {}
    probe_cpu_seconds: Dict[int, float] = {}

    def before(step: int) -> None:
        starts[step] = time.perf_counter()
        cpu_starts[step] = time.process_time()

    def after(step: int) -> None:
        if probe is not None:
            wall, cpu = time.perf_counter(), time.process_time()
            probe(trainer, step)
            probe_seconds[step] = time.perf_counter() - wall
            probe_cpu_seconds[step] = time.process_time() - cpu
        on_step(step + 1)

    trainer.callbacks += [
        TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before),
        TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after),
    ]
    try:
        trainer.train()
    finally:  # nerfstudio's writers are global: close the ones this training added
        for event_writer in writer.EVENT_WRITERS[writers:]:
            tb_writer = getattr(event_writer, "tb_writer", None)
            if tb_writer is not None:
                tb_writer.close()
        del writer.EVENT_WRITERS[writers:]
    end, cpu_end = time.perf_counter(), time.process_time()

    def durations(clock: Dict[int, float], last: float, excluded: Dict[int, float]) -> Dict[int, float]:
        steps = sorted(clock)
        ends = [clock[s] for s in steps[1:]] + [last]  # an iteration lasts until the next one starts
        return {s: e - clock[s] - excluded.get(s, 0.0) for s, e in zip(steps, ends)}

    return TrainingRecord(
        trainer,
        setup_seconds,
        end - start - setup_seconds - sum(probe_seconds.values()),
        durations(starts, end, probe_seconds),
        durations(cpu_starts, cpu_end, probe_cpu_seconds),
    )


def mean_seconds(iteration_seconds: Dict[int, float], first: int, last: int) -> Optional[float]:
    """Mean seconds of iterations first..last (step 0 left out: it includes one-off warm-up)."""
    values = [seconds for step, seconds in iteration_seconds.items() if max(first, 1) <= step <= last]
    return float(np.mean(values)) if values else None


# ----------------------------------------------------------------------------------------- one scene
@dataclass
class Scene:
    """One test scene: its views and what the baselines need."""

    name: str
    datamanager: object
    views: List[HeldOutView]
    input_images: List[torch.Tensor]
    input_frames: List[int]

    def figure_views(self, count: int) -> List[int]:
        """Positions of ``count`` held-out views spread over the sequence."""
        n = len(self.views)
        return sorted({min(n - 1, (2 * k + 1) * n // (2 * count)) for k in range(count)})


def load_scene(settings: Settings, output: Path, name: str, device: str) -> Scene:
    config = run_config(settings, output, name, "nerf")
    datamanager = config.pipeline.datamanager.setup(device=device, test_mode="test")
    train_dataset = datamanager.train_dataset
    return Scene(
        name=name,
        datamanager=datamanager,
        views=held_out_views(datamanager.eval_dataset),
        input_images=[train_dataset[i]["image"].permute(2, 0, 1) for i in range(len(train_dataset))],
        input_frames=list(train_dataset.metadata.get("frame_indices", range(len(train_dataset)))),
    )


def cost_record(cost: TeacherCost) -> Dict[str, float]:
    return {
        name: (round(value, 3) if name == "teacher_seconds" else int(value)) for name, value in cost.as_dict().items()
    }


def evaluation_record(method: str, scene: Scene, evaluation: ViewsEvaluation) -> Dict:
    return {
        "method": method,
        "scene": scene.name,
        "input_frames": scene.input_frames,
        "num_views": len(evaluation.per_view),
        "mean": evaluation.mean,
        "per_view": evaluation.per_view,
        "render_seconds": round(evaluation.seconds, 3),
    }


def save_figure_renders(folder: Path, method: str, scene: Scene, evaluation: ViewsEvaluation, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for position in scene.figure_views(count):
        with atomic_path(folder / f"{method}_{scene.views[position].frame_index:03d}.png") as temporary:
            image_row([evaluation.renders[position]], scene.views[position].width).save(temporary, format="PNG")


def load_figure_render(folder: Path, method: str, frame_index: int) -> Optional[torch.Tensor]:
    from PIL import Image

    path = folder / f"{method}_{frame_index:03d}.png"
    if not path.is_file():
        return None
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


class SceneEtaColumn(ProgressColumn):
    """The task's ``eta`` field when it has one (the overall bar), else rich's estimate."""

    def __init__(self) -> None:
        super().__init__()
        self._fallback = TimeRemainingColumn()

    def render(self, task) -> Text:
        if "eta" in task.fields:
            return Text(task.fields["eta"], style="progress.remaining")
        return self._fallback.render(task)


def record_path(output: Path, scene: str, method: str) -> Path:
    """Where a comparison folder keeps ``method``'s record of ``scene`` (written once the method finished)."""
    return output / "scenes" / scene / f"{method}.json"


def progress_display() -> Progress:
    """Bars with elapsed time and an ETA (the task's ``eta`` field when it has one), nerfstudio's console."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        SceneEtaColumn(),
        console=CONSOLE,
    )


class Runner:
    """Runs the stages of every scene, writing each method's result as soon as it is known."""

    def __init__(
        self,
        settings: Settings,
        output: Path,
        scenes: List[str],
        progress: Progress,
        device: str,
        figure_scenes: Sequence[str] = (),
    ):
        self.settings = settings
        self.output = output
        self.scenes = scenes
        self.figure_scenes = set(figure_scenes)
        """Scenes shown in comparison.png, whose renders are kept."""
        self.progress = progress
        self.device = device
        self.teacher = Teacher.from_pretrained(settings.teacher, device=device)
        self.lpips = None
        if settings.lpips_vgg_weights:
            self.lpips = lpips_or_warn(LPIPSConfig(vgg_weights=Path(settings.lpips_vgg_weights)), device=device)
        self.overall: TaskID = progress.add_task("scenes", total=len(scenes), eta="…")
        self.stage: Optional[TaskID] = None
        self.stage_started = 0.0
        self.current = ("", "")

    # ---- bookkeeping
    def scene_dir(self, scene: str) -> Path:
        return self.output / "scenes" / scene

    def result_path(self, scene: str, method: str) -> Path:
        return record_path(self.output, scene, method)

    def done(self, scene: str, method: str) -> bool:
        return self.result_path(scene, method).is_file()

    def stage_seconds(self, record: Dict) -> float:
        return float(record["wall_seconds"]["total"])

    def eta(self) -> str:
        """Remaining time from the mean wall time of every stage measured so far (earlier sessions too)."""
        measured: Dict[str, List[float]] = {method: [] for method in STAGES}
        for scene in self.scenes:
            for method in STAGES:
                if self.done(scene, method):
                    measured[method].append(self.stage_seconds(json.loads(self.result_path(scene, method).read_text())))
        remaining = 0.0
        for scene in self.scenes:
            for method in STAGES:
                if self.done(scene, method) or self.baseline_source(scene, method) is not None:
                    continue
                if not measured[method]:
                    return "after the first scene"
                remaining += float(np.mean(measured[method]))
                if (scene, method) == self.current:
                    remaining -= min(time.perf_counter() - self.stage_started, float(np.mean(measured[method])))
        return _duration(remaining)

    def begin(self, scene: str, method: str, what: str, total: int) -> Callable[[int], None]:
        if self.stage is not None:
            self.progress.remove_task(self.stage)
        self.current = (scene, method)
        self.stage = self.progress.add_task(f"  {escape(scene)}: {what}", total=total)
        stage = self.stage

        def update(done: int) -> None:
            self.progress.update(stage, completed=done)
            if done % 25 == 0 or done == total:
                self.progress.update(self.overall, eta=self.eta())

        return update

    def baseline_source(self, scene: str, method: str) -> Optional[Path]:
        """``--baselines-from``'s folder of ``scene`` if it holds ``method``'s record, else None."""
        if self.settings.baselines_from is None or method not in BASELINE_METHODS:
            return None
        source = Path(self.settings.baselines_from) / "scenes" / scene
        return source if (source / f"{method}.json").is_file() else None

    def reuse_baseline(self, scene: str, method: str) -> bool:
        """Copy ``method``'s record (and picture renders) of ``scene`` from ``--baselines-from``, if it has them."""
        source = self.baseline_source(scene, method)
        if source is None:
            return False
        record = json.loads((source / f"{method}.json").read_text())
        record["copied_from"] = str(source / f"{method}.json")
        for render in sorted((source / "figure").glob(f"{method}_*.png")):
            (self.scene_dir(scene) / "figure").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(render, self.scene_dir(scene) / "figure" / render.name)
        self.write(scene, method, record)
        return True

    def write(self, scene: str, method: str, record: Dict) -> None:
        self.scene_dir(scene).mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.result_path(scene, method), json.dumps(record, indent=1))

    # ---- stages
    def run(self, on_scene_done: Callable[[], None]) -> None:
        for name in self.scenes:
            if all(self.done(name, method) for method in STAGES):
                self.progress.advance(self.overall)
                continue
            scene = load_scene(self.settings, self.output, name, self.device)
            figure = name in self.figure_scenes
            for method in STAGES:
                if self.done(name, method) or self.reuse_baseline(name, method):
                    continue
                self.stage_started = time.perf_counter()
                cpu_start = time.process_time()
                if method in ("nerf", "sparsefusion"):
                    record, evaluation = self.field_stage(scene, method)
                else:
                    record, evaluation = self.baseline_stage(scene, method)
                record["cpu_seconds"] = round(time.process_time() - cpu_start, 3)
                if figure:
                    save_figure_renders(
                        self.scene_dir(name) / "figure", method, scene, evaluation, self.settings.figure_views
                    )
                self.write(name, method, record)
                self.progress.update(self.overall, eta=self.eta())
            self.progress.advance(self.overall)
            on_scene_done()
        if self.stage is not None:
            self.progress.remove_task(self.stage)

    def field_stage(self, scene: Scene, method: str):
        settings = self.settings
        config = run_config(settings, self.output, scene.name, method)
        update = self.begin(scene.name, method, f"training {LABELS[method]}", settings.iterations)
        curve: List[Dict] = []
        probe = None
        if method == "sparsefusion" and settings.quality_every > 0:
            probe = QualityProbe(scene, settings, curve)
        training = train(config, update, probe)
        model = training.trainer.pipeline.model
        model.eval()
        start = time.perf_counter()
        update = self.begin(scene.name, method, f"evaluating {LABELS[method]}", len(scene.views))
        evaluation = evaluate_views(field_renderer(model), scene.views, self.lpips, on_view=update)
        evaluate_seconds = time.perf_counter() - start
        phases = {"all": (0, settings.iterations - 1)}
        if method == "sparsefusion":
            phases.update(
                bootstrap=(0, settings.bootstrap_iterations),
                diffusion=(settings.bootstrap_iterations + 1, settings.iterations - 1),
            )

        def per_phase(seconds: Dict[int, float]) -> Dict[str, Optional[float]]:
            means = {phase: mean_seconds(seconds, *steps) for phase, steps in phases.items()}
            return {phase: (round(value, 4) if value is not None else None) for phase, value in means.items()}

        cost = TeacherCost()
        perceptual_loss = None
        if method == "sparsefusion":
            (step_b,) = [c.func for c in training.trainer.callbacks if isinstance(c.func, NovelViewStep)]
            cost = step_b.counters.totals()
            perceptual_loss = step_b.lpips is not None
        record = evaluation_record(method, scene, evaluation)
        record.update(
            run=str(config.get_base_dir() / "config.yml"),
            wall_seconds={
                "setup": round(training.setup_seconds, 3),
                "train": round(training.train_seconds, 3),
                "evaluate": round(evaluate_seconds, 3),
                "total": round(training.setup_seconds + training.train_seconds + evaluate_seconds, 3),
            },
            seconds_per_iteration=per_phase(training.iteration_seconds),
            cpu_seconds_per_iteration=per_phase(training.iteration_cpu_seconds),
            teacher=cost_record(cost),
        )
        if perceptual_loss is not None:
            record["perceptual_loss"] = perceptual_loss
        if method == "sparsefusion":
            record["schedule"] = settings.schedule
        if probe is not None:
            record["quality_curve"] = curve
        return record, evaluation

    def baseline_stage(self, scene: Scene, method: str):
        start = time.perf_counter()
        if method == "eft":
            baseline = EFTBaseline.for_scene(self.teacher, scene.datamanager)
        else:
            baseline = VLDMBaseline.for_scene(
                self.teacher, scene.datamanager, self.settings.vldm_steps, self.settings.seed
            )
        renderer: ViewRenderer = baseline
        update = self.begin(scene.name, method, f"evaluating {LABELS[method]}", len(scene.views))
        evaluation = evaluate_views(renderer, scene.views, self.lpips, on_view=update)
        total = time.perf_counter() - start
        record = evaluation_record(method, scene, evaluation)
        record.update(
            wall_seconds={"evaluate": round(total, 3), "total": round(total, 3)}, teacher=cost_record(baseline.cost)
        )
        return record, evaluation


class QualityProbe:
    """SparseFusion's time-to-quality: every ``quality_every`` iterations (and after the last), the
    held-out PSNR and SSIM on ``quality_views`` views spread over the sequence, with the teacher's
    UNet evaluations and the training's wall seconds (probes excluded) spent so far. The probe renders
    in eval mode under a forked global generator, so the training it watches is unchanged."""

    def __init__(self, scene: Scene, settings: Settings, curve: List[Dict]) -> None:
        self.views = [scene.views[i] for i in scene.figure_views(settings.quality_views)]
        self.every = settings.quality_every
        self.last_step = settings.iterations - 1
        self.curve = curve
        self.started = time.perf_counter()
        self.probing_seconds = 0.0

    def __call__(self, trainer: SparseFusionTrainer, step: int) -> None:
        done = step + 1
        if done % self.every != 0 and step != self.last_step:
            return
        start = time.perf_counter()
        model = trainer.pipeline.model
        (step_b,) = [c.func for c in trainer.callbacks if isinstance(c.func, NovelViewStep)]
        totals = step_b.counters.totals()
        devices = [model.device.index] if model.device.type == "cuda" and model.device.index is not None else []
        with torch.random.fork_rng(devices=devices):
            model.eval()
            try:
                evaluation = evaluate_views(field_renderer(model), self.views, None)
            finally:
                model.train()
        self.curve.append(
            {
                "step": step,
                "iterations": done,
                "unet_evals": int(totals.unet_evals),
                "teacher_seconds": round(totals.teacher_seconds, 3),
                "train_seconds": round(start - self.started - self.probing_seconds, 3),
                **{name: evaluation.mean[name] for name in ("psnr", "ssim") if name in evaluation.mean},
            }
        )
        self.probing_seconds += time.perf_counter() - start


def mean_quality_curve(records: Sequence[Dict]) -> Optional[List[Dict]]:
    """Mean over scenes of their ``quality_curve`` entries at the same step (the steps every scene has)."""
    curves = [r["quality_curve"] for r in records if r.get("quality_curve")]
    if not curves:
        return None
    steps = sorted(set.intersection(*({entry["step"] for entry in curve} for curve in curves)))
    mean = []
    for step in steps:
        entries = [next(e for e in curve if e["step"] == step) for curve in curves]
        point: Dict[str, object] = {"step": step, "num_scenes": len(entries)}
        for key in ("iterations", "unet_evals", "teacher_seconds", "train_seconds", "psnr", "ssim"):
            values = [e[key] for e in entries if key in e]
            if values:
                point[key] = float(np.mean(values))
        mean.append(point)
    return mean


# ----------------------------------------------------------------------------------------- reports
def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _mean_std(values: Sequence[float]) -> tuple:
    values = [float(v) for v in values]
    if not values:
        return None, None
    return float(np.mean(values)), (statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(output: Path, scenes: List[str]) -> Dict[str, Dict[str, Dict]]:
    """scene → method → record, for the scenes whose four methods are finished."""
    results = {}
    for scene in scenes:
        paths = {method: record_path(output, scene, method) for method in METHODS}
        if all(path.is_file() for path in paths.values()):
            results[scene] = {method: json.loads(path.read_text()) for method, path in paths.items()}
    return results


def summarize(results: Dict[str, Dict[str, Dict]]) -> Dict[str, Dict]:
    summary = {}
    for method in METHODS:
        records = [results[scene][method] for scene in results]
        entry: Dict[str, object] = {"description": DESCRIPTIONS[method], "num_scenes": len(records)}
        for name in METRIC_NAMES:
            values = [r["mean"][name] for r in records if name in r["mean"]]
            if values:
                entry[name] = dict(zip(("mean", "std"), _mean_std(values)))
        for name in ("unet_evals", "vae_encodes", "vae_decodes", "eft_queries", "teacher_seconds"):
            entry[f"teacher_{name}" if not name.startswith("teacher") else name] = _mean_std(
                [r["teacher"][name] for r in records]
            )[0]
        entry["wall_seconds"] = _mean_std([r["wall_seconds"]["total"] for r in records])[0]
        if method in ("nerf", "sparsefusion"):
            entry["train_seconds"] = _mean_std([r["wall_seconds"]["train"] for r in records])[0]
            keys = records[0]["seconds_per_iteration"].keys() if records else ()
            entry["seconds_per_iteration"] = {
                key: _mean_std([r["seconds_per_iteration"][key] for r in records if r["seconds_per_iteration"][key]])[0]
                for key in keys
            }
        if method == "sparsefusion":
            entry["schedule"] = records[0].get("schedule", "authors") if records else None
            curve = mean_quality_curve(records)
            if curve is not None:
                entry["quality_curve"] = curve
        summary[method] = entry
    return summary


def machine_record(workers: int = 1) -> Dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "workers": workers,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "load_average_1_5_15_min": [round(value, 2) for value in load] if load else None,
    }


def markdown(settings: Settings, scenes: List[str], results: Dict, summary: Dict, machine: Dict, command: str) -> str:
    def metric(entry: Dict, name: str, digits: int) -> str:
        if name not in entry:
            return "—"
        return f"{entry[name]['mean']:.{digits}f} ± {entry[name]['std']:.{digits}f}"

    def number(value, digits: int = 1) -> str:
        return "—" if value is None else f"{value:,.{digits}f}"

    lpips_on = any("lpips" in summary[m] for m in METHODS)
    sf, nerf = summary["sparsefusion"], summary["nerf"]
    spi = sf.get("seconds_per_iteration", {})
    lines = [
        f"# {settings.category}: SparseFusion and its baselines, V = {settings.num_input_views}",
        "",
        f"{len(results)} of {len(scenes)} test scenes finished (`{settings.subset}`, split `test`). Command:",
        "",
        f"    {command}",
        "",
        "| method | PSNR ↑ | SSIM ↑ |"
        + (" LPIPS ↓ |" if lpips_on else "")
        + " teacher UNet evaluations / scene | teacher s / scene | wall s / scene |",
        "|---|---|---|" + ("---|" if lpips_on else "") + "---|---|---|",
    ]
    for method in METHODS:
        entry = summary[method]
        row = f"| {LABELS[method]} | {metric(entry, 'psnr', 2)} | {metric(entry, 'ssim', 3)} |"
        if lpips_on:
            row += f" {metric(entry, 'lpips', 3)} |"
        row += f" {number(entry['teacher_unet_evals'], 0)} | {number(entry['teacher_seconds'])} | {number(entry['wall_seconds'])} |"
        lines.append(row)
    lines += [
        "",
        "Mean ± sample standard deviation over scenes of the per-scene mean over held-out views. Protocol: 32 "
        f"evenly spaced frames per sequence, {settings.num_input_views} input views from the co3d dataparser's "
        "permutation seeded by the scene index, every other frame held out; both images multiplied by the "
        "foreground mask and the valid region; PSNR/SSIM as scikit-image defines them"
        + (", LPIPS-VGG." if lpips_on else "; LPIPS not computed (no local LPIPS-VGG weights given)."),
        "",
        "## Methods and schedule",
        "",
    ]
    for method in METHODS:
        lines.append(f"- **{LABELS[method]}**: {DESCRIPTIONS[method]}.")
    lines += [
        "",
        f"- Teacher: `{settings.teacher}`; co3d crops of {settings.image_size}².",
        f"- NeRF and SparseFusion: `sparsefusion-mini`, {settings.iterations} iterations, "
        f"{settings.rays_per_batch} input-view rays per iteration at full resolution, seed {settings.seed}.",
        f"- SparseFusion: novel views rendered at {settings.render_resolution}² and upsampled to "
        f"{settings.image_size}²; bootstrap from the EFT at steps 0–{settings.bootstrap_iterations}, diffusion "
        f"targets at steps {settings.bootstrap_iterations + 1}–{settings.iterations - 1} ("
        + (
            f"PLMS, min(⌊2·{settings.plms_max_steps}·t⌋, {settings.plms_max_steps}) steps, t ~ U(0, 0.99)"
            if settings.schedule == "authors"
            else f"schedule `{settings.schedule}`, docs/schedules.md: a cached target per pool camera, "
            "regenerated in batches with few DDIM steps"
        )
        + f"); perceptual (LPIPS-VGG) loss **{'on' if settings.use_perceptual_loss else 'off'}**; the novel-camera "
        f"pool's look-at point nearest the inputs' {LOOK_AT_AXES_WORDS[settings.look_at_axes]}.",
        f"- VLDM baseline: PLMS from pure noise at t = 1 in {settings.vldm_steps} steps "
        f"({settings.vldm_steps + 1} UNet evaluations per view).",
        *(
            [
                f"- NeRF, EFT and VLDM are copied from `{settings.baselines_from}` (`--baselines-from`: same "
                "baseline settings); only SparseFusion was trained here, so their wall times are that run's."
            ]
            if settings.baselines_from
            else []
        ),
        "",
        "## Time",
        "",
        f"- Seconds per training iteration (mean over scenes, step 0 excluded): NeRF "
        f"{number(nerf.get('seconds_per_iteration', {}).get('all'), 3)}; SparseFusion bootstrap "
        f"{number(spi.get('bootstrap'), 3)}, diffusion {number(spi.get('diffusion'), 3)}.",
        f"- Training seconds per scene: NeRF {number(nerf.get('train_seconds'))}, SparseFusion "
        f"{number(sf.get('train_seconds'))}. Wall time per scene, all four methods: "
        f"{number(sum(summary[m]['wall_seconds'] or 0 for m in METHODS))} s.",
        f"- Machine: {machine['platform']}, {machine['cpu_count']} CPUs, torch {machine['torch']} with "
        f"{machine['torch_threads']} threads on {machine['device']}"
        + (f" in each of {machine['workers']} processes (`--workers`)" if machine.get("workers", 1) > 1 else "")
        + "; load average at the last write "
        f"{machine['load_average_1_5_15_min']} (1, 5, 15 min).",
        "",
        "## Per scene (PSNR / SSIM; SparseFusion's teacher UNet evaluations and training seconds)",
        "",
        "| scene | input frames | "
        + " | ".join(LABELS[m] for m in METHODS)
        + f" | {LABELS['sparsefusion']} UNet evaluations | {LABELS['sparsefusion']} train s |",
        "|---|---|" + "---|" * len(METHODS) + "---|---|",
    ]
    for scene, records in results.items():
        cells = [f"{records[m]['mean']['psnr']:.2f} / {records[m]['mean']['ssim']:.3f}" for m in METHODS]
        sf_record = records["sparsefusion"]
        cells += [f"{sf_record['teacher']['unet_evals']:,}", number(sf_record["wall_seconds"].get("train"))]
        lines.append(f"| {scene} | {records['nerf']['input_frames']} | " + " | ".join(cells) + " |")
    lines += ["", "![comparison](comparison.png)", ""]
    return "\n".join(lines)


def comparison_picture(output: Path, settings: Settings, scenes: List[Scene]) -> Optional[Path]:
    rows, labels = [], []
    for scene in scenes:
        folder = output / "scenes" / scene.name / "figure"
        for position in scene.figure_views(settings.figure_views):
            view = scene.views[position]
            renders = [load_figure_render(folder, method, view.frame_index) for method in METHODS]
            if any(render is None for render in renders):
                continue
            rows.append(image_row([*scene.input_images, *renders, view.image], CELL_WIDTH))
            labels.append(f"{scene.name}\nframe {view.frame_index}")
    if not rows:
        return None
    columns = (
        [f"input {k + 1}" for k in range(settings.num_input_views)] + [LABELS[m] for m in METHODS] + ["ground truth"]
    )
    path = output / "comparison.png"
    with atomic_path(path) as temporary:
        stack_rows(rows, columns, CELL_WIDTH, labels, row_label_width=100).save(temporary, format="PNG")
    return path


def write_reports(
    output: Path,
    settings: Settings,
    scenes: List[str],
    figure_scenes: List[Scene],
    command: str,
    teacher: Dict,
    workers: int = 1,
) -> Dict:
    results = collect(output, scenes)
    summary = summarize(results)
    machine = machine_record(workers)
    document = {
        "settings": asdict(settings),
        "command": command,
        "teacher": teacher,
        "machine": machine,
        "scenes_requested": scenes,
        "scenes_finished": list(results),
        "summary": summary,
        "scenes": results,
    }
    write_text_atomically(output / "results.json", json.dumps(document, indent=1))
    write_text_atomically(output / "results.md", markdown(settings, scenes, results, summary, machine, command))
    comparison_picture(output, settings, figure_scenes)
    return summary


# ----------------------------------------------------------------------------------------- workers
def scene_finished(output: Path, scene: str) -> bool:
    return all(record_path(output, scene, method).is_file() for method in STAGES)


def run_workers(args: argparse.Namespace, argv: Sequence[str], output: Path, scenes: List[str]) -> None:
    """Split the unfinished scenes over ``args.workers`` processes of this script and wait for them.

    Scenes are dealt in turn (scene i to process i mod N), so each process gets the same mix. Each
    process resumes the comparison folder like a rerun would, on its own scenes, with
    ``args.threads`` (default 1) torch threads, logging to ``workers/worker_<k>.log``.
    """
    todo = [scene for scene in scenes if not scene_finished(output, scene)]
    groups = [group for group in (todo[k :: args.workers] for k in range(args.workers)) if group]
    if not groups:
        return
    logs = output / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    threads = str(args.threads or 1)
    script = str(Path(__file__).resolve())
    processes = []
    for k, group in enumerate(groups):
        log = logs / f"worker_{k}.log"
        command = [sys.executable, script, *argv, "--workers", "1", "--threads", threads, "--worker-scenes", *group]
        with open(log, "w") as stream:
            processes.append((subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT), log, group))
    CONSOLE.print(
        f"{len(todo)} scenes in {len(groups)} processes of {threads} torch thread(s) each; logs in {escape(str(logs))}"
    )
    records = lambda: sum(  # noqa: E731
        record_path(output, scene, method).is_file() for scene in scenes for method in STAGES
    )
    progress = progress_display()
    try:
        with progress:
            task = progress.add_task("methods × scenes", total=len(scenes) * len(STAGES), completed=records())
            while any(process.poll() is None for process, _, _ in processes):
                time.sleep(2.0)
                progress.update(task, completed=records())
            progress.update(task, completed=records())
    finally:  # interrupted: stop the workers too (a rerun resumes their scenes)
        for process, _, _ in processes:
            if process.poll() is None:
                process.terminate()
                process.wait()
    failed = [(process.returncode, log, group) for process, log, group in processes if process.returncode != 0]
    if failed:
        lines = []
        for code, log, group in failed:
            tail = log.read_text(errors="replace").splitlines()[-8:]
            lines.append(f"the process of {', '.join(group)} exited with {code}; {log} ends with:\n" + "\n".join(tail))
        raise SystemExit("Error: " + "\n".join(lines) + "\nRerun the same command to resume.")


# ----------------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    argv = list(argv) if argv is not None else sys.argv[1:]
    for name in ("workers", "iterations", "rays"):
        if getattr(args, name) < 1:
            raise SystemExit(f"Error: --{name} {getattr(args, name)}: at least 1.")
    worker = args.worker_scenes is not None
    for message in BENIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if args.threads or args.workers > 1:
        torch.set_num_threads(args.threads or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = Teacher.from_pretrained(args.teacher)  # fails early, naming the folder
    teacher_info = {
        "parameters": teacher.parameter_counts(),
        "config": teacher.config.to_dict(),
        "provenance": teacher.provenance,
    }
    image_size = teacher.config.eft.image_size
    del teacher
    lpips_files = None
    try:  # the given file, else torchvision's cache; never downloaded
        lpips_files = resolve_lpips_weights(LPIPSConfig(vgg_weights=args.lpips_vgg_weights))
    except LPIPSWeightsNotFoundError as error:
        if args.lpips_vgg_weights is not None or args.use_perceptual_loss == "on":
            raise SystemExit(f"Error: {error}") from None
        CONSOLE.print(
            "[bold yellow]LPIPS is not computed and SparseFusion trains without its perceptual loss[/bold yellow] "
            f"(--lpips-vgg-weights FILE turns both on): {escape(str(error))}"
        )
    perceptual = {"auto": lpips_files is not None, "on": True, "off": False}[args.use_perceptual_loss]
    settings = Settings(
        data=str(args.data.resolve()),
        category=args.category,
        subset=args.subset,
        teacher=str(args.teacher.resolve()),
        num_input_views=args.num_input_views,
        iterations=args.iterations,
        bootstrap_iterations=args.bootstrap_iterations,
        plms_max_steps=args.plms_max_steps,
        rays_per_batch=args.rays,
        render_resolution=image_size // 2,
        image_size=image_size,
        vldm_steps=args.vldm_steps,
        seed=args.seed,
        use_perceptual_loss=perceptual,
        lpips_vgg_weights=str(lpips_files[0].resolve()) if lpips_files else None,
        figure_scenes=args.figure_scenes,
        figure_views=args.figure_views,
        schedule=args.schedule,
        quality_every=args.quality_every,
        quality_views=args.quality_views,
        baselines_from=str(args.baselines_from.resolve()) if args.baselines_from else None,
        look_at_axes=args.look_at_axes,
    )
    if settings.baselines_from:
        check_baselines_source(Path(settings.baselines_from), settings)
    scenes = choose_scenes(args)
    output = args.output
    prepare_output(output, settings, args.overwrite and not worker)
    command = " ".join(["python", "benchmarks/mini_category_comparison.py", *argv])
    started = time.perf_counter()
    CONSOLE.rule(f"SparseFusion vs baselines: {len(scenes)} {escape(args.category)} scenes, V = {args.num_input_views}")
    if args.workers > 1:
        run_workers(args, argv, output, scenes)
    figure_scenes: List[Scene] = []

    def reports() -> None:
        if not figure_scenes:  # the picture's scenes, loaded once (their views and input images)
            figure_scenes.extend(
                load_scene(settings, output, name, device) for name in scenes[: settings.figure_scenes]
            )
        write_reports(output, settings, scenes, figure_scenes, command, teacher_info, args.workers)

    progress = progress_display()
    with progress:
        runner = Runner(
            settings, output, args.worker_scenes or scenes, progress, device, scenes[: settings.figure_scenes]
        )
        runner.run(on_scene_done=(lambda: None) if worker else reports)
    if worker:  # the parent writes the reports once every process has finished
        return
    reports()

    summary = json.loads((output / "results.json").read_text())["summary"]
    table = Table(title=f"Held-out views, mean over {summary['nerf']['num_scenes']} scenes", show_lines=False)
    for column in ("method", "PSNR", "SSIM", "LPIPS", "teacher UNet evals / scene", "wall s / scene"):
        table.add_column(column, justify="right" if column != "method" else "left")
    for method in METHODS:
        entry = summary[method]
        fmt = lambda name, d: f"{entry[name]['mean']:.{d}f} ± {entry[name]['std']:.{d}f}" if name in entry else "—"  # noqa: E731
        table.add_row(
            LABELS[method],
            fmt("psnr", 2),
            fmt("ssim", 3),
            fmt("lpips", 3),
            f"{entry['teacher_unet_evals'] or 0:,.0f}",
            f"{entry['wall_seconds'] or 0:.1f}",
        )
    CONSOLE.print(table)
    written = [
        (f"{name}: {what}", output / name)
        for name, what in (
            ("results.md", "summary table and schedule"),
            ("results.json", "everything, per view"),
            ("comparison.png", "inputs | NeRF | EFT | VLDM | SparseFusion | ground truth"),
            ("runs", "the trained runs (config.yml + checkpoint each)"),
            ("scenes", "per-scene results"),
        )
        if (output / name).exists()
    ]
    print_summary("Comparison Finished", [*written, ("Time this session", _duration(time.perf_counter() - started))])


if __name__ == "__main__":
    main()
