"""Does the EFT's depth centre d̄ matter? The EFT baseline scored with d̄ from the inputs and from all frames.

Not a test. The EFT samples its 3D points at depths d̄ ± 5 along each query ray (SPEC: d̄ = mean
distance of the input camera centres from the world origin). In teacher training d̄ is the mean
over the pool of ~20 frames the example is drawn from (``teacher_training/datasets.py``); at
distillation and in the benchmark's EFT and VLDM baselines only the V input cameras are known, so d̄
is their mean, which differs from the training-time value by the capture's distance jitter. This
script measures what that costs: for each scene, the EFT baseline's held-out masked PSNR/SSIM
(co3d protocol, as in ``mini_category_comparison.py``) with d̄ from the inputs (what every path
uses) and from all the sequence's evaluation frames (inputs and held-out views, closest to what
training saw).

    python benchmarks/eft_depth_center.py --data data/synthetic --teacher teachers/critter-mini \\
        --scenes 0_001010_test 0_001012_test --output benchmarks/results/eft_depth_center.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch

from sparsefusion_ns.distillation.teacher_inputs import ndc_cameras
from sparsefusion_ns.evaluation.eft_baseline import EFTBaseline
from sparsefusion_ns.evaluation.held_out import evaluate_views
from sparsefusion_ns.utils.atomic_files import write_text_atomically

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distillation_margin import add_scene_source_arguments, teacher_and_scene_loader  # noqa: E402  (the comparison benchmark's scenes)


@torch.no_grad()
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scene_source_arguments(parser)
    parser.add_argument("--scenes", nargs="+", required=True, help="test sequence names")
    parser.add_argument("--output", type=Path, required=True, help="JSON record")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    records = {}
    scratch = tempfile.mkdtemp(prefix="eft_depth_center_")  # the co3d crops' cache
    teacher, load_scene = teacher_and_scene_loader(
        args.data, args.teacher, Path(scratch), category=args.category, num_input_views=args.num_input_views
    )
    for name in args.scenes:
        scene = load_scene(name)
        baseline = EFTBaseline.for_scene(teacher, scene.datamanager)
        held_out = torch.stack([ndc_cameras(view.camera).camera_centers()[0] for view in scene.views])
        every_frame = torch.cat([held_out, baseline.cameras.camera_centers()])
        centres = {"inputs": baseline.depth_center, "all_frames": float(every_frame.norm(dim=-1).mean())}
        records[name] = {}
        for label, depth_center in centres.items():
            baseline.depth_center = depth_center
            evaluation = evaluate_views(baseline, scene.views, None)
            records[name][label] = {"depth_center": depth_center, **{k: evaluation.mean[k] for k in ("psnr", "ssim")}}
        inputs, every = records[name]["inputs"], records[name]["all_frames"]
        print(
            f"{name}: d̄ {inputs['depth_center']:.3f} (inputs) vs {every['depth_center']:.3f} (all frames): "
            f"PSNR {inputs['psnr']:.2f} vs {every['psnr']:.2f} dB, SSIM {inputs['ssim']:.4f} vs {every['ssim']:.4f}",
            flush=True,
        )
    shutil.rmtree(scratch, ignore_errors=True)
    command = " ".join(["python", "benchmarks/eft_depth_center.py", *(argv if argv is not None else sys.argv[1:])])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(args.output, json.dumps({"command": command, "scenes": records}, indent=1))


if __name__ == "__main__":
    main()
