"""Is the novel-camera pool why SparseFusion fails on a scene? Its orbit's geometry, and pool ablations.

Not a test. The honest pool (``NovelCameraPoolConfig.source="inputs"``, docs/method.md) fits its
orbit, a look-at point and a circle, to the V input cameras alone. This script measures, per scene
of a synthetic category (``sf-make-category``: ``instance.json`` holds the true shape):

- **geometry**, without training: the distance from the object's centre (the centre of the true
  parts' bounding box) to the look-at point fitted to the inputs (through their mean principal
  point, and through their optical axes) and to every frame of the sequence; the angle between the
  first two input cameras seen from that centre; both circles' radii. Distances in world units (a
  critter is ≈ 4 across).
- with ``--train POOL ...``: SparseFusion trained and scored as ``mini_category_comparison.py``
  trains and scores it (same configuration, trainer, seed and schedule; masked PSNR and SSIM on the
  held-out frames), with the pool
  - ``inputs``: the inputs pool with its look-at point nearest the inputs' rays through their mean
    principal point (``NovelCameraPoolConfig.look_at_axes="mean_principal_point"``, as the authors
    compute it; the default until the V = 2 benchmark measured ``optical``);
  - ``optical``: the inputs pool with its look-at point nearest the inputs' own optical axes (the
    default since);
  - ``authors``: the authors' pool, every frame's pose plus a circle fitted to all frames (it
    uses the held-out poses, as the authors' code does, and aims as they do);
  - ``frame-orbit``: the inputs pool's cameras (inputs, circle and random orbit cameras), on the
    orbit fitted to every frame. It separates the orbit's geometry from the held-out poses
    themselves. Both it and ``authors`` take d̄ (the EFT's depth centre) from every frame, and aim at
    the point nearest every frame's ray through the mean principal point.

    python benchmarks/novel_camera_pool.py --data data/synthetic --teacher teachers/critter-mini \\
        --scenes 0_001017_test --train inputs optical frame-orbit --output <dir>

Writes ``<dir>/pool.json`` (the commands, geometry and scores per scene; a rerun skips the trainings
it holds) and keeps each training's run folder under ``<dir>/runs``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence
from unittest import mock

import numpy as np
import torch

from sparsefusion_ns.distillation import callbacks, novel_cameras
from sparsefusion_ns.distillation.teacher_inputs import inputs_for_teacher, scene_frame_cameras
from sparsefusion_ns.evaluation.geometry import load_instance
from sparsefusion_ns.evaluation.held_out import evaluate_views, field_renderer
from sparsefusion_ns.scripts.export_density_mesh import field_to_world
from sparsefusion_ns.synthetic.shapes import bounding_sphere
from sparsefusion_ns.teacher_training.config import DataConfig
from sparsefusion_ns.utils.atomic_files import write_text_atomically

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distillation_margin import add_scene_source_arguments, load_comparison, scoring_settings  # noqa: E402  (the comparison benchmark's scenes and trainings)

POOLS = ("inputs", "optical", "frame-orbit", "authors")
"""Pool variants ``--train`` accepts (module docstring)."""


def frame_orbit_pool(
    config: novel_cameras.NovelCameraPoolConfig,
    input_cameras: novel_cameras.NDCCameras,
    generator: torch.Generator,
    scene_frames: Optional[novel_cameras.NDCCameras] = None,
) -> novel_cameras.NovelCameraPool:
    """``build_novel_camera_pool``'s stand-in for ``frame-orbit``: the inputs pool on the orbit of every frame."""
    if scene_frames is None:
        raise ValueError("the frame-orbit pool needs every scene frame's camera (scene_frames)")
    orbit = novel_cameras.fit_orbit(scene_frames.to("cpu", torch.float32), "mean_principal_point")
    inputs_config = dataclasses.replace(config, source="inputs")
    return novel_cameras.build_novel_camera_pool(inputs_config, input_cameras, generator, orbit=orbit)


def orbit_geometry(teacher, datamanager, instance: Path) -> Dict[str, float]:
    """The inputs' and all frames' fitted orbits against the true object centre (module docstring)."""
    shape = load_instance(instance)
    centre = torch.as_tensor(np.asarray(bounding_sphere(shape.parts)[0]), dtype=torch.float32)
    inputs = inputs_for_teacher(datamanager, teacher).cameras.to("cpu", torch.float32)
    frames = scene_frame_cameras(datamanager, teacher.config.eft.image_size, DataConfig.of_teacher(teacher.provenance))
    circle_inputs, look_at_inputs = novel_cameras.fit_orbit(inputs, "mean_principal_point")
    _, look_at_optical = novel_cameras.fit_orbit(inputs, "optical")
    circle_frames, look_at_frames = novel_cameras.fit_orbit(frames.to("cpu", torch.float32), "mean_principal_point")
    # the cameras are in the field's frame, the true shape in the sequence's (instance.json's)
    outputs = datamanager.train_dataparser_outputs

    def to_world(points: torch.Tensor) -> torch.Tensor:
        world = field_to_world(points.double().numpy(), outputs.dataparser_transform, outputs.dataparser_scale)
        return torch.from_numpy(world).float()

    look_at_inputs, look_at_optical, look_at_frames = to_world(
        torch.stack([look_at_inputs, look_at_optical, look_at_frames])
    )
    towards = torch.nn.functional.normalize(to_world(inputs.camera_centers()[:2]) - centre, dim=-1)
    return {
        "look_at_error_inputs": float((look_at_inputs - centre).norm()),
        "look_at_error_inputs_optical": float((look_at_optical - centre).norm()),
        "look_at_error_frames": float((look_at_frames - centre).norm()),
        "input_angle_degrees": float(torch.rad2deg(torch.acos((towards[0] @ towards[1]).clamp(-1, 1)))),
        "radius_inputs": circle_inputs.radius / float(outputs.dataparser_scale),
        "radius_frames": circle_frames.radius / float(outputs.dataparser_scale),
    }


def train_and_score(settings, output: Path, scene: str, pool: str) -> Dict[str, float]:
    """SparseFusion on ``scene`` with the ``pool`` variant, scored on the held-out frames."""
    comparison = load_comparison()
    folder = output / "runs" / f"{scene}_{pool}"
    data = comparison.load_scene(settings, folder, scene, "cpu")
    config = comparison.run_config(settings, folder, scene, "sparsefusion")
    config.pipeline.model.distillation.pool.source = "inputs" if pool in ("inputs", "optical") else "authors"
    config.pipeline.model.distillation.pool.look_at_axes = "optical" if pool == "optical" else "mean_principal_point"
    stand_in = mock.Mock(side_effect=frame_orbit_pool)
    patch = (
        mock.patch.object(callbacks, "build_novel_camera_pool", stand_in)
        if pool == "frame-orbit"
        else contextlib.nullcontext()
    )
    start = time.perf_counter()
    with patch:
        model = comparison.train(config, lambda step: None).trainer.pipeline.model
    if pool == "frame-orbit" and not stand_in.called:
        raise RuntimeError(
            "the frame-orbit pool was not used: distillation/callbacks.py no longer builds its pool through "
            "build_novel_camera_pool, so this script's stand-in must follow it"
        )
    model.eval()
    evaluation = evaluate_views(field_renderer(model), data.views, lpips=None)
    return {
        **{name: evaluation.mean[name] for name in ("psnr", "ssim")},
        "per_view_psnr": [round(view["psnr"], 2) for view in evaluation.per_view],
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scene_source_arguments(parser)
    parser.add_argument("--scenes", nargs="+", required=True, help="test sequence names")
    parser.add_argument("--train", nargs="*", default=[], choices=POOLS, help="pool variants to train (default: none)")
    parser.add_argument("--iterations", type=int, default=600, help="training iterations (the comparison's 600)")
    parser.add_argument("--bootstrap-iterations", type=int, default=200, help="bootstrap until this step (200)")
    parser.add_argument("--plms-max-steps", type=int, default=10, help="most PLMS steps of a target (10)")
    parser.add_argument("--rays", type=int, default=1024, help="input-view rays per iteration (1024)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True, help="folder of pool.json and the runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from sparsefusion_ns.teacher.bundle import Teacher

    teacher = Teacher.from_pretrained(args.teacher).eval()
    settings = scoring_settings(
        args.data,
        args.teacher,
        category=args.category,
        num_input_views=args.num_input_views,
        image_size=teacher.config.eft.image_size,
        seed=args.seed,
        iterations=args.iterations,
        bootstrap_iterations=args.bootstrap_iterations,
        plms_max_steps=args.plms_max_steps,
        rays=args.rays,
    )
    record_file = args.output / "pool.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    stored = record.setdefault("settings", json.loads(json.dumps(dataclasses.asdict(settings))))
    changed = load_comparison().settings_differences(stored, settings, ignore=("look_at_axes",))  # each pool's own
    if changed:
        raise SystemExit(f"Error: {record_file} holds scores made with other settings (then → now: {changed}): "
                         "pass the same options or another --output.")  # fmt: skip
    command = " ".join(["python", "benchmarks/novel_camera_pool.py", *(argv if argv is not None else sys.argv[1:])])
    record.setdefault("commands", []).append(command)  # every run that wrote into this folder
    scenes = record.setdefault("scenes", {})
    args.output.mkdir(parents=True, exist_ok=True)
    for name in args.scenes:
        scene = scenes.setdefault(name, {"trained": {}})
        datamanager = load_comparison().load_scene(settings, args.output / "geometry", name, "cpu").datamanager
        scene["geometry"] = orbit_geometry(
            teacher, datamanager, Path(args.data) / args.category / name / "instance.json"
        )
        print(name, json.dumps({key: round(value, 3) for key, value in scene["geometry"].items()}), flush=True)
        write_text_atomically(record_file, json.dumps(record, indent=1))
        for pool in args.train:
            if pool not in scene["trained"]:
                scene["trained"][pool] = train_and_score(settings, args.output, name, pool)
                write_text_atomically(record_file, json.dumps(record, indent=1))
            scores = scene["trained"][pool]
            print(f"{name} {pool}: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f}", flush=True)


if __name__ == "__main__":
    main()
