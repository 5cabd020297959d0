"""How much a short distillation with a trained teacher beats the no-teacher field, over seeds.

Not a test: it measures the margin that ``tests/test_distillation_quality.py`` asserts. For one
test scene of a category and every ``--seeds`` value, it trains the ``sparsefusion-mini`` field
twice with the same seed and schedule, once on the V input views alone (**NeRF**) and once
distilling ``--teacher`` (**SparseFusion**), and scores both on the scene's held-out frames of the
co3d protocol (masked PSNR and SSIM). The trainings are the comparison benchmark's
(``mini_category_comparison.py``: same configuration, same in-process nerfstudio trainer).

    python benchmarks/distillation_margin.py --data demo/data --scene 2026_000000_test \\
        --teacher teachers/critter-mini --seeds 0 1 2 3 4 --output benchmarks/results/margin

Writes ``<output>/margin.json``: per seed the two PSNR/SSIM means and their difference, and the
smallest, mean and largest difference. The schedule defaults are the quality test's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from sparsefusion_ns.distillation.novel_cameras import DEFAULT_LOOK_AT_AXES
from sparsefusion_ns.evaluation.held_out import evaluate_views, field_renderer
from sparsefusion_ns.utils.atomic_files import atomic_file

COMPARISON = Path(__file__).resolve().parent / "mini_category_comparison.py"

QUALITY_TEST_SCHEDULE = {"iterations": 160, "bootstrap_iterations": 120, "plms_max_steps": 4, "rays": 512}
"""The short schedule of the quality test: 3/4 of it bootstraps from the EFT, the rest distils
PLMS targets of at most 4 steps; half the benchmark's rays per step."""


def load_comparison():
    """The comparison benchmark as a module (its configuration and training code are reused)."""
    name = "mini_category_comparison"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, COMPARISON)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class PairScore:
    """Held-out means of one seed: NeRF and SparseFusion, trained alike."""

    seed: int
    nerf: Dict[str, float]
    sparsefusion: Dict[str, float]
    seconds: float

    @property
    def psnr_gain(self) -> float:
        return self.sparsefusion["psnr"] - self.nerf["psnr"]


def scoring_settings(
    data: Path,
    teacher: Path,
    *,
    category: str,
    num_input_views: int,
    image_size: int,
    seed: int,
    iterations: int = 1,
    bootstrap_iterations: int = 0,
    plms_max_steps: int = QUALITY_TEST_SCHEDULE["plms_max_steps"],
    rays: int = 1,
):
    """The comparison benchmark's ``Settings`` for scoring one scene outside it: no figure, no LPIPS,
    a one-step VLDM baseline (unused), the field's render at half the teacher's image size and the
    package's default novel-camera pool."""
    return load_comparison().Settings(
        data=str(Path(data).resolve()),
        category=category,
        subset="fewview_test",
        teacher=str(Path(teacher).resolve()),
        num_input_views=num_input_views,
        iterations=iterations,
        bootstrap_iterations=bootstrap_iterations,
        plms_max_steps=plms_max_steps,
        rays_per_batch=rays,
        render_resolution=image_size // 2,
        image_size=image_size,
        vldm_steps=1,
        seed=seed,
        use_perceptual_loss=False,
        lpips_vgg_weights=None,
        figure_scenes=0,
        figure_views=0,
        look_at_axes=DEFAULT_LOOK_AT_AXES,
    )


def add_scene_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--category``, ``--teacher`` and ``--num-input-views``: what :func:`teacher_and_scene_loader` needs."""
    parser.add_argument("--data", type=Path, required=True, help="category root (CO3Dv2 layout)")
    parser.add_argument("--category", default="critter")
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--num-input-views", type=int, default=2)


def teacher_and_scene_loader(
    data: Path,
    teacher_path: Path,
    scratch: Path,
    *,
    category: str,
    num_input_views: int,
    seed: int = 0,
    plms_max_steps: int = QUALITY_TEST_SCHEDULE["plms_max_steps"],
):
    """A teacher (eval mode) and ``load(name)``, which loads a test scene as the comparison scores it.

    The scenes' co3d crops are cached under ``scratch``; settings as :func:`scoring_settings`.
    """
    from sparsefusion_ns.teacher.bundle import Teacher

    comparison = load_comparison()
    teacher = Teacher.from_pretrained(teacher_path).eval()
    settings = scoring_settings(
        data,
        teacher_path,
        category=category,
        num_input_views=num_input_views,
        image_size=teacher.config.eft.image_size,
        seed=seed,
        plms_max_steps=plms_max_steps,
    )
    return teacher, lambda name: comparison.load_scene(settings, Path(scratch), name, "cpu")


def score_pair(
    data: Path,
    scene: str,
    teacher: Path,
    output: Path,
    seed: int,
    category: str = "critter",
    num_input_views: int = 2,
    iterations: int = QUALITY_TEST_SCHEDULE["iterations"],
    bootstrap_iterations: int = QUALITY_TEST_SCHEDULE["bootstrap_iterations"],
    plms_max_steps: int = QUALITY_TEST_SCHEDULE["plms_max_steps"],
    rays: int = QUALITY_TEST_SCHEDULE["rays"],
    image_size: int = 64,
) -> PairScore:
    """Train NeRF and SparseFusion on ``scene`` with ``seed`` and score both on its held-out frames."""
    comparison = load_comparison()
    settings = scoring_settings(
        data,
        teacher,
        category=category,
        num_input_views=num_input_views,
        image_size=image_size,
        seed=seed,
        iterations=iterations,
        bootstrap_iterations=bootstrap_iterations,
        plms_max_steps=plms_max_steps,
        rays=rays,
    )
    start = time.perf_counter()
    folder = Path(output) / f"seed-{seed}"
    scene_data = comparison.load_scene(settings, folder, scene, "cpu")
    means = {}
    for method in ("nerf", "sparsefusion"):
        config = comparison.run_config(settings, folder, scene, method)
        model = comparison.train(config, lambda step: None).trainer.pipeline.model
        model.eval()
        evaluation = evaluate_views(field_renderer(model), scene_data.views, lpips=None)
        means[method] = {name: evaluation.mean[name] for name in ("psnr", "ssim")}
    return PairScore(seed, means["nerf"], means["sparsefusion"], time.perf_counter() - start)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="category root (CO3Dv2 layout)")
    parser.add_argument("--category", default="critter")
    parser.add_argument("--scene", required=True, help="test sequence name")
    parser.add_argument("--teacher", type=Path, required=True, help="teacher folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--num-input-views", type=int, default=2)
    for name, value in QUALITY_TEST_SCHEDULE.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scores: List[PairScore] = []
    for seed in args.seeds:
        score = score_pair(
            args.data,
            args.scene,
            args.teacher,
            args.output,
            seed,
            args.category,
            args.num_input_views,
            args.iterations,
            args.bootstrap_iterations,
            args.plms_max_steps,
            args.rays,
        )
        scores.append(score)
        print(
            f"seed {seed}: NeRF {score.nerf['psnr']:.2f} dB, SparseFusion {score.sparsefusion['psnr']:.2f} dB, "
            f"gain {score.psnr_gain:+.2f} dB ({score.seconds:.0f} s)",
            flush=True,
        )
    gains = [score.psnr_gain for score in scores]
    record = {
        "command": " ".join(["python", "benchmarks/distillation_margin.py", *(argv or sys.argv[1:])]),
        "schedule": {name: getattr(args, name) for name in QUALITY_TEST_SCHEDULE},
        "look_at_axes": DEFAULT_LOOK_AT_AXES,
        "scene": args.scene,
        "teacher": str(args.teacher),
        "torch_threads": torch.get_num_threads(),
        "seeds": [
            {
                "seed": s.seed,
                "nerf": s.nerf,
                "sparsefusion": s.sparsefusion,
                "psnr_gain": round(s.psnr_gain, 4),
                "seconds": round(s.seconds, 1),
            }
            for s in scores
        ],
        "psnr_gain": {"min": min(gains), "mean": sum(gains) / len(gains), "max": max(gains)},
    }
    args.output.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.output / "margin.json", "w") as stream:
        json.dump(record, stream, indent=2)
    print(json.dumps(record["psnr_gain"]))


if __name__ == "__main__":
    main()
