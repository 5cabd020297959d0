"""Seconds per forward + backward of the pure-torch hash grid (``hash_grid_encode_torch``) on the CPU.

Not a test. Times the layouts of ``sparsefusion-mini``/``-tiny`` (8 levels, 2^14 entries) and of the
paper's ``sparsefusion`` (16 levels, 2^16) on ``--points`` random positions, as one training step
uses them (forward, then backward into the table)::

    python benchmarks/bench_hash_grid.py [--points 65536] [--repeats 5] [--threads 1]

Run it at two commits to compare kernels: the script only uses the function's public signature.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sparsefusion_ns.field.hash_grid import HashGridLayout, hash_grid_encode_torch

LAYOUTS = {
    "mini/tiny (8 levels, 2^14)": HashGridLayout(num_levels=8, log2_hashmap_size=14, max_resolution=512),
    "paper (16 levels, 2^16)": HashGridLayout(),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=65536, help="positions per call (default 65536: 1024 rays × 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per layout (default 5), after one warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    positions = torch.rand(args.points, 3, generator=generator)
    for name, layout in LAYOUTS.items():
        table = torch.randn(layout.num_entries * layout.features_per_level, generator=generator, requires_grad=True)
        seconds = []
        for repeat in range(args.repeats + 1):
            start = time.perf_counter()
            hash_grid_encode_torch(positions, table, layout).square().sum().backward()
            if repeat:  # the first call warms the allocator up
                seconds.append(time.perf_counter() - start)
            table.grad = None
        print(f"{name}: {statistics.median(seconds):.3f} s median, {min(seconds):.3f} s best "
              f"({args.points} points, {args.threads} thread(s))")  # fmt: skip


if __name__ == "__main__":
    main()
