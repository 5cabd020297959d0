"""Time and memory of one VLDM UNet forward (batch 1, 32×32 latent, 256-channel condition).

Not a test. Run with ``python benchmarks/bench_unet.py [--threads N] [--skip-full]``.

CPU: float32, random weights; reports the first (cold: oneDNN primitive/weight-layout set-up)
and the mean of the following warm forwards, and the peak resident-memory growth during the
forward above the RSS after model construction (RSS sampled every millisecond with psutil in a
background thread; Python's tracemalloc does not see torch's allocations).
CUDA (if available): float32, and autocast bfloat16 / float16, with ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import torch

from sparsefusion_ns.teacher.unet import VLDMUNet, VLDMUNetConfig

LATENT_SIZE = 32
"""The released model denoises 4×32×32 latents of 256² images (SD kl-f8 VAE)."""


@contextlib.contextmanager
def peak_rss_growth() -> Iterator[dict[str, float]]:
    """Yields a dict whose ``"mib"`` is set, on exit, to the peak RSS growth (MiB) inside the block."""
    process = psutil.Process()
    start = process.memory_info().rss
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.001)

    result: dict[str, float] = {}
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        result["mib"] = (peak[0] - start) / 2**20


def inputs(config: VLDMUNetConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, config.latent_channels, LATENT_SIZE, LATENT_SIZE, generator=generator)
    cond = torch.randn(1, config.cond_channels, LATENT_SIZE, LATENT_SIZE, generator=generator)
    log_snr = torch.tensor([0.5])
    return x.to(device), log_snr.to(device), cond.to(device)


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def bench_cpu(name: str, config: VLDMUNetConfig, warm_runs: int) -> None:
    start = time.perf_counter()
    model = VLDMUNet(config).eval()
    build_s = time.perf_counter() - start
    x, log_snr, cond = inputs(config, torch.device("cpu"))
    n_params = sum(p.numel() for p in model.parameters())

    def forward() -> None:
        with torch.no_grad():
            model(x, log_snr, cond)

    with peak_rss_growth() as cold_mem:
        cold_s = timed(forward, lambda: None)
    with peak_rss_growth() as warm_mem:
        warm_s = sum(timed(forward, lambda: None) for _ in range(warm_runs)) / warm_runs
    print(
        f"cpu  {name:5s} fp32 params {n_params / 1e6:8.3f} M  build {build_s:6.2f} s  "
        f"forward cold {cold_s:7.3f} s (+{cold_mem['mib']:7.1f} MiB RSS)  "
        f"warm {warm_s:7.3f} s (+{warm_mem['mib']:7.1f} MiB RSS, mean of {warm_runs})"
    )


def bench_cuda(name: str, config: VLDMUNetConfig, runs: int) -> None:
    device = torch.device("cuda")
    model = VLDMUNet(config).eval().to(device)
    x, log_snr, cond = inputs(config, device)
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        autocast = torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()

        def forward() -> None:
            with torch.no_grad(), autocast:
                model(x, log_snr, cond)

        forward()  # warm-up (cuDNN algorithm selection)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        seconds = sum(timed(forward, torch.cuda.synchronize) for _ in range(runs)) / runs
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        print(
            f"cuda {name:5s} {label} forward {seconds * 1e3:8.2f} ms (mean of {runs})  "
            f"peak +{peak:7.1f} MiB above weights"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-full", action="store_true", help="only the tiny configuration")
    parser.add_argument("--warm-runs", type=int, default=3, help="warm CPU forwards to average")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    configs = [("tiny", VLDMUNetConfig.tiny())]
    if not args.skip_full:
        configs.append(("full", VLDMUNetConfig.full()))
    for name, config in configs:
        bench_cpu(name, config, args.warm_runs)
    if torch.cuda.is_available():
        for name, config in configs:
            bench_cuda(name, config, runs=10)
    else:
        print("cuda not available: skipped fp32/bf16/fp16 GPU timings")


if __name__ == "__main__":
    main()
