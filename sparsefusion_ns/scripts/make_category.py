"""``sf-make-category``: write the procedural "critters" category in the CO3Dv2 layout.

::

    sf-make-category --output data/synthetic --num-train 1000 --num-test 100     # ≈ 10 min on 2 cores

The result is read unchanged by the ``co3d`` dataparser (``--data data/synthetic co3d --category
critter --subset fewview_test``) and by ``sf-train-teacher --data.root data/synthetic
--data.categories critter``. Beside the CO3D files, every sequence folder holds ``instance.json``
(the exact shapes, for scoring meshes against the true surface) and the category folder holds
``synthetic_category.json`` (generator version, options and seed: the provenance). See
:mod:`sparsefusion_ns.synthetic.category` for what the category looks like and why.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import tyro
from rich.markup import escape

from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns import __version__
from sparsefusion_ns.data.co3d_annotations import Co3dFrame
from sparsefusion_ns.synthetic.category import GENERATOR_VERSION, CaptureConfig, make_sequence
from sparsefusion_ns.synthetic.co3d_writer import FrameOptions, write_category_annotations, write_sequence_frames
from sparsefusion_ns.synthetic.shapes import scene_to_json
from sparsefusion_ns.utils.output_folders import prepare_output_folder
from sparsefusion_ns.utils.summary import print_summary, progress_bar

PROVENANCE_FILE = "synthetic_category.json"
"""Written into the category folder: how it was generated."""
INSTANCE_FILE = "instance.json"
"""Written into every sequence folder: the object's exact shapes (``shapes.scene_from_json``)."""


@dataclass
class MakeCategoryConfig:
    """Options of ``sf-make-category``."""

    output: Path = Path("data/synthetic")
    """Dataset root to write (the category becomes ``<output>/<category>``)."""
    category: str = "critter"
    """Category folder name."""
    num_train: int = 1000
    """Training sequences (listed under ``train`` in every set list)."""
    num_dev: int = 10
    """Sequences of the ``test`` split of ``set_lists_fewview_dev.json``."""
    num_test: int = 100
    """Sequences of the ``test`` split of ``set_lists_fewview_test.json``: instances never seen in training."""
    train_frames: int = 24
    """Frames per training sequence."""
    test_frames: int = 32
    """Frames per dev and test sequence (the evaluation protocol uses 32 evenly spaced frames)."""
    seed: int = 0
    """Seed of every instance and capture; the same seed writes the same files."""
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    """How the sequences are filmed."""
    frames: FrameOptions = field(default_factory=FrameOptions)
    """How frames are rendered and stored."""
    workers: int = 0
    """Processes rendering sequences in parallel; 0: one per CPU core."""
    overwrite: bool = False
    """Replace an existing category folder (otherwise a non-empty folder is refused)."""
    progress: bool = True
    """Show a progress bar."""


def sequence_plan(config: MakeCategoryConfig) -> List[Tuple[int, str, str, int]]:
    """(instance index, sequence name, role, frames) of every sequence, in writing order.

    Indices run over train, then dev, then test sequences, so adding training sequences changes
    which instances are held out; names carry the index.
    """
    plan = []
    for role, count, frames in (
        ("train", config.num_train, config.train_frames),
        ("dev", config.num_dev, config.test_frames),
        ("test", config.num_test, config.test_frames),
    ):
        for _ in range(count):
            index = len(plan)
            plan.append((index, f"{config.seed}_{index:06d}_{role}", role, frames))
    return plan


def _write_one(args: Tuple[MakeCategoryConfig, int, str, str, int]) -> Tuple[str, List[Co3dFrame]]:
    config, index, name, role, num_frames = args
    capture = make_sequence(config.seed, index, name, role, num_frames, config.capture)
    frames = write_sequence_frames(config.output, config.category, capture, config.frames)
    instance = {"sequence_name": name, "role": role, "scene": scene_to_json(capture.scene)}
    (Path(config.output) / config.category / name / INSTANCE_FILE).write_text(json.dumps(instance))
    return name, frames


def _run(config: MakeCategoryConfig, plan, workers: int) -> Iterator[Tuple[str, List[Co3dFrame]]]:
    jobs = [(config, *entry) for entry in plan]
    if workers <= 1:
        yield from map(_write_one, jobs)
        return
    # Rendering is numpy-bound: one thread per process avoids oversubscribing the cores.
    with ProcessPoolExecutor(max_workers=workers, initializer=_single_thread) as pool:
        yield from pool.map(_write_one, jobs, chunksize=4)


def _single_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn/scikit-image stacks
        pass


def make_category(config: MakeCategoryConfig) -> Dict[str, Path]:
    """Write the category; returns the annotation files and the provenance file written."""
    for name in ("num_train", "num_dev", "num_test"):
        if getattr(config, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must not be negative")
    if config.num_test + config.num_dev + config.num_train == 0:
        raise ValueError("nothing to write: all of --num-train, --num-dev and --num-test are 0")
    if min(config.train_frames, config.test_frames) < 2:
        raise ValueError("--train-frames and --test-frames must be at least 2")
    folder = Path(config.output) / config.category
    prepare_output_folder(folder, config.overwrite, "sf-make-category --output/--category")
    if config.overwrite:  # the whole category folder is this command's output
        shutil.rmtree(folder)
        folder.mkdir(parents=True)

    plan = sequence_plan(config)
    workers = config.workers if config.workers > 0 else (os.cpu_count() or 1)
    frames: Dict[str, List[Co3dFrame]] = {}
    started = time.perf_counter()
    progress = progress_bar(f"[bold]{escape(config.category)}[/] sequences", disable=not config.progress)
    with progress:
        task = progress.add_task("render", total=len(plan))
        for name, sequence_frames in _run(config, plan, workers):
            frames[name] = sequence_frames
            progress.advance(task)
    roles = {name: role for _, name, role, _ in plan}
    written = write_category_annotations(config.output, config.category, frames, roles, config.seed)
    provenance = {
        "generator": f"sparsefusion-ns {__version__} sf-make-category",
        "generator_version": GENERATOR_VERSION,
        "options": json.loads(json.dumps(asdict(config), default=str)),
        "sequences": {role: sum(1 for r in roles.values() if r == role) for role in ("train", "dev", "test")},
        "frames": sum(len(f) for f in frames.values()),
        "seconds": round(time.perf_counter() - started, 1),
        "workers": workers,
    }
    written["provenance"] = folder / PROVENANCE_FILE
    written["provenance"].write_text(json.dumps(provenance, indent=1))
    return written


def read_provenance(root: Path, category: str) -> Optional[dict]:
    """The provenance record of a generated category, or None for another dataset."""
    path = Path(root) / category / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def entrypoint() -> None:
    """Entry point of the ``sf-make-category`` console script."""
    config = tyro.cli(MakeCategoryConfig)
    try:
        written = make_category(config)
    except (FileExistsError, ValueError) as error:
        CONSOLE.print(f"[bold red]Error:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
        raise SystemExit(1) from error
    provenance = json.loads(written["provenance"].read_text())
    counts = provenance["sequences"]
    folder = Path(config.output) / config.category
    print_summary(
        "Category Written",
        [
            ("Category folder", folder),
            (
                "Sequences",
                f"{counts['train']} train, {counts['dev']} dev, {counts['test']} test ({provenance['frames']} frames)",
            ),
            *[(name.replace("_", " ").capitalize(), path) for name, path in written.items()],
            ("True shapes", folder / "<sequence>" / INSTANCE_FILE),
            ("Time", f"{provenance['seconds']:.0f} s with {provenance['workers']} worker(s)"),
            (
                "Use it",
                f"ns-train sparsefusion-mini --data {config.output} co3d --category {config.category} --subset fewview_test",
            ),
        ],
    )


if __name__ == "__main__":
    entrypoint()
