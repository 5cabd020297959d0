"""How well a teacher's VLDM denoises held-out views of a test scene, from each start time t.

Not a test. For a few held-out frames of one test scene (co3d protocol, inputs as the distillation
gives them to the EFT), the masked ground-truth image is encoded by the teacher's VAE, noised to
x_t at each ``--times`` value, and denoised conditioned on the EFT features of that camera, (a) in
one step (x̂₀ from the predicted ε) and (b) with the authors' PLMS sampler in
min(⌊2·``--plms-max-steps``·t⌋, ``--plms-max-steps``) steps, as a distillation target is made.
Prints the ε error and the PSNR of both decoded results against the masked ground truth, per view
and as a mean table, and writes a picture of the rows [ground truth | one-step, PLMS for each t].

    python benchmarks/vldm_denoising.py --data data/synthetic --scene 0_001010_test \\
        --teacher teachers/critter-mini --output benchmarks/results/vldm_denoising.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torchvision.utils import save_image

from sparsefusion_ns.distillation.teacher_inputs import inputs_for_teacher, ndc_cameras
from sparsefusion_ns.metrics.image_metrics import psnr
from sparsefusion_ns.teacher.samplers import PLMSSampler, PLMSSamplerConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distillation_margin import add_scene_source_arguments, teacher_and_scene_loader  # noqa: E402  (the comparison benchmark's scenes)


@torch.no_grad()
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scene_source_arguments(parser)
    parser.add_argument("--scene", required=True, help="test sequence name")
    parser.add_argument("--views", type=int, nargs="+", default=[3, 11, 20], help="held-out view positions")
    parser.add_argument("--times", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--plms-max-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="PNG of the denoised views")
    args = parser.parse_args(argv)

    scratch = Path(args.output).parent if args.output else Path("benchmarks/results")
    teacher, load_scene = teacher_and_scene_loader(
        args.data,
        args.teacher,
        scratch / "vldm_denoising_scratch",
        category=args.category,
        num_input_views=args.num_input_views,
        seed=args.seed,
        plms_max_steps=args.plms_max_steps,
    )
    scene = load_scene(args.scene)
    inputs = inputs_for_teacher(scene.datamanager, teacher)
    schedule = teacher.schedule
    sampler = PLMSSampler(PLMSSamplerConfig(max_steps=args.plms_max_steps), schedule)
    generator = torch.Generator().manual_seed(args.seed)
    scores: Dict[str, Dict[float, List[float]]] = {"one_step": {}, "plms": {}}
    tiles = []
    for position in args.views:
        view = scene.views[position]
        _, features = teacher.eft.query(inputs.images, inputs.cameras, ndc_cameras(view.camera), inputs.depth_center)
        target = (view.image * view.fg_mask)[None]
        z0 = teacher.vae.encode(target)
        tiles.append(target[0])
        for t in args.times:
            noise = torch.randn(z0.shape, generator=generator)
            x_t = schedule.q_sample(z0, t, noise)
            time = torch.full((1,), t)
            eps = teacher.unet(x_t, schedule.log_snr(time), features[None])
            one_step = teacher.vae.decode(schedule.predict_x0_from_eps(x_t, time, eps))
            plms = teacher.vae.decode(sampler.sample(teacher.unet, features[None], t, x_t=x_t, noise=generator).x0)
            for name, image in (("one_step", one_step), ("plms", plms)):
                scores[name].setdefault(t, []).append(psnr(image[0], target[0]))
            tiles += [one_step[0], plms[0]]
            print(
                f"view {view.frame_index} t={t:.2f}: ε MSE {float((eps - noise).pow(2).mean()):.3f}, "
                f"one-step x̂₀ {scores['one_step'][t][-1]:.2f} dB, PLMS ({sampler.num_steps(t)} steps) "
                f"{scores['plms'][t][-1]:.2f} dB"
            )
    print("\n| start time t | " + " | ".join(f"{t:g}" for t in args.times) + " |")
    print("|---|" + "---|" * len(args.times))
    for name, label in (("one_step", "one-step x̂₀"), ("plms", "PLMS")):
        means = [sum(scores[name][t]) / len(scores[name][t]) for t in args.times]
        print(f"| {label} | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        save_image(torch.stack(tiles).clamp(0, 1), args.output, nrow=1 + 2 * len(args.times))
        print(f"picture: {args.output}")


if __name__ == "__main__":
    main()
