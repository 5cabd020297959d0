"""Timings for ``benchmarks/gpu_check.sh``: UNet, one distillation iteration per schedule, peak memory.

Not a test. On CUDA, at the paper's sizes (random weights: timings do not depend on them):

- one full-size VLDM UNet evaluation (batch 1, 4×32² latent, 256-channel EFT condition);
- one paper-config distillation iteration (step B) of each schedule: the ``sparsefusion`` field
  renders a 128² pool camera with gradients (importance sampling, 64 + 64 samples per ray),
  bilinear upsampling to 256², the teacher's target, L1 loss, backward and an Adam step.
  ``authors``: a fresh PLMS target from t = 0.37 (38 UNet evaluations, the mean of
  max(min(⌊100t⌋, 50), 1) + 1 over t ~ U(0, 0.99) is 38.1). ``cached``: the render and loss of every
  iteration plus its share of a regeneration (every pool camera rendered without gradients and
  denoised in batches of ``cached.batch_size`` with ``cached.ddim_steps`` DDIM steps, every
  ``cached.refresh_every`` iterations; one batch is timed and scaled);
- the peak GPU memory of the ``authors`` iteration in fp32, teacher weights included;

each in fp32 and under bf16 autocast, printed as one table. Without CUDA it says so and runs the
same code at toy sizes on the CPU (tiny teacher, tiny field, 16² renders), so the script is known
to work: those CPU figures measure nothing about the paper's cost.

    python benchmarks/gpu_check.py [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F


@dataclass
class Sizes:
    device: torch.device
    teacher: object
    model: object
    render_resolution: int
    plms_max_steps: int
    authors_t: float
    pool_size: int
    label: str


def build(device: torch.device) -> Sizes:
    from nerfstudio.data.scene_box import SceneBox

    from sparsefusion_ns.plugin.method_configs import sparsefusion_config, sparsefusion_tiny_config
    from sparsefusion_ns.teacher.bundle import Teacher, TeacherConfig

    box = SceneBox(aabb=torch.tensor([[-4.0] * 3, [4.0] * 3]))
    if device.type == "cuda":
        config = sparsefusion_config()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            teacher = Teacher(TeacherConfig.full()).to(device)
        resolution, label = config.pipeline.model.distillation.render_resolution, "paper sizes"
    else:
        config = sparsefusion_tiny_config()
        teacher, resolution, label = Teacher.tiny(seed=0), 16, "toy sizes on the CPU"
    model_config = config.pipeline.model
    model_config.sampler = "torch"  # the authors' importance sampling
    model_config.field.implementation = "torch" if device.type == "cpu" else model_config.field.implementation
    model = model_config.setup(scene_box=box, num_train_data=2).to(device).train()
    distillation = model_config.distillation
    pool = distillation.pool
    pool_size = 2 + pool.num_circle_cameras + pool.num_random_cameras  # V = 2
    return Sizes(device, teacher, model, resolution, distillation.plms_max_steps, 0.37, pool_size, label)


def rays(resolution: int, device: torch.device):
    from nerfstudio.cameras.rays import RayBundle

    n = resolution * resolution
    u = torch.linspace(-0.3, 0.3, resolution, device=device)
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), dim=-1).reshape(n, 2)
    directions = F.normalize(torch.cat([grid, torch.ones(n, 1, device=device)], dim=-1), dim=-1)
    origins = torch.tensor([[0.0, 0.0, -3.0]], device=device).expand(n, 3).contiguous()
    ones = torch.ones(n, 1, device=device)
    return RayBundle(origins=origins, directions=directions, pixel_area=ones * 1e-4, nears=ones * 1.0, fars=ones * 5.0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, runs: int) -> float:
    """Mean seconds of ``runs`` calls after one warm-up call."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / runs


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def measure(sizes: Sizes, dtype: Optional[torch.dtype], runs: int) -> Dict[str, float]:
    from sparsefusion_ns.distillation.config import DistillationConfig
    from sparsefusion_ns.distillation.objective import denoised_target, upsample
    from sparsefusion_ns.teacher.samplers import DDIMSampler, DDIMSamplerConfig, PLMSSampler, PLMSSamplerConfig

    device, teacher, model = sizes.device, sizes.teacher, sizes.model
    image_size = teacher.config.eft.image_size
    grid = image_size // 8
    channels = teacher.config.unet.cond_channels
    generator = torch.Generator().manual_seed(0)
    bundle = rays(sizes.render_resolution, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    cached = DistillationConfig().cached
    plms = PLMSSampler(PLMSSamplerConfig(max_steps=sizes.plms_max_steps), teacher.schedule)
    ddim = DDIMSampler(DDIMSamplerConfig(max_steps=cached.ddim_steps, steps_proportional_to_t=False), teacher.schedule)
    x = torch.randn(1, teacher.config.unet.latent_channels, grid, grid, device=device)
    cond = torch.randn(1, channels, grid, grid, device=device)
    log_snr = torch.tensor([0.5], device=device)
    r = sizes.render_resolution

    def unet() -> None:
        with torch.no_grad(), autocast(device, dtype):
            teacher.unet(x, log_snr, cond)

    def render(grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad), autocast(device, dtype):
            outputs = model.get_outputs(bundle)
        return upsample(outputs["rgb"].float().reshape(r, r, 3).permute(2, 0, 1)[None], image_size)

    def fit(image: torch.Tensor, target: torch.Tensor) -> None:
        loss = (image - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def authors_iteration() -> None:
        image = render(True)
        with autocast(device, dtype):
            target = denoised_target(teacher, plms, image, cond, sizes.authors_t, generator)
        fit(image, target.image.float())

    fixed_target = torch.rand(1, 3, image_size, image_size, device=device)

    def cached_iteration_without_refresh() -> None:
        fit(render(True), fixed_target)

    batch = min(cached.batch_size, sizes.pool_size)
    batch_cond = cond.expand(batch, -1, -1, -1).contiguous()

    def cached_refresh_batch() -> None:
        images = torch.cat([render(False) for _ in range(batch)])
        with autocast(device, dtype):
            denoised_target(teacher, ddim, images, batch_cond, 0.5, generator)

    result = {"unet_s": timed(unet, device, runs)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result["authors_s"] = timed(authors_iteration, device, runs)
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    refresh_s = timed(cached_refresh_batch, device, 1) * math.ceil(sizes.pool_size / batch)
    result["cached_s"] = timed(cached_iteration_without_refresh, device, runs) + refresh_s / cached.refresh_every
    result["refresh_s"] = refresh_s
    return result


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed repetitions after one warm-up (default 3)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        print("CUDA is not available: running the timings at toy sizes on the CPU (they only show the script works)")
    sizes = build(device)
    rows = []
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        figures = measure(sizes, dtype, args.runs)
        rows.append((label, figures))
    print(f"\nDistillation cost, {sizes.label} ({device}; pool of {sizes.pool_size} cameras, "
          f"{sizes.render_resolution}² renders; cached: see DistillationConfig.cached)")  # fmt: skip
    header = "| dtype | UNet eval ms | authors iteration s | cached iteration s (amortised) | cached regeneration s | peak GiB |"
    print(header)
    print("|---|---|---|---|---|---|")
    for label, f in rows:
        peak = f"{f['peak_gib']:.2f}" if "peak_gib" in f else "n/a (CPU)"
        print(
            f"| {label} | {f['unet_s'] * 1e3:.2f} | {f['authors_s']:.3f} | {f['cached_s']:.3f} | "
            f"{f['refresh_s']:.3f} | {peak} |"
        )


if __name__ == "__main__":
    main()
