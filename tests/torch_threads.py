"""Run a block with a given number of torch intra-op threads, restoring the previous count after."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """On this project's small shared CPUs one thread is often fastest (measured in the fixtures'
    docstrings); the count is restored even when the block fails."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
