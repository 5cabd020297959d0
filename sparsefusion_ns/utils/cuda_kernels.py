"""The one dispatch rule of the CUDA twins: ``auto``, the kernel's name, or ``torch``.

Two parts of the method have a CUDA fast path beside a pure-torch path that runs everywhere:

============  ==========================================  =======================================
part          option                                      CUDA kernel (its value)
============  ==========================================  =======================================
ray sampler   ``--pipeline.model.sampler``                 nerfacc's occupancy-grid marching (``nerfacc``)
hash grid     ``--pipeline.model.field.implementation``    tiny-cuda-nn's hash encoding (``tcnn``)
============  ==========================================  =======================================

Both options take the same three values and follow the same rule (:meth:`OptionalCudaKernel.use`):

- ``torch``: always the pure-torch path;
- the kernel's value: the CUDA kernel, or an error naming the option when the tensors are not on
  CUDA or the kernel does not load (it never falls back silently);
- ``auto`` (the default): the CUDA kernel when the tensors are on CUDA and the kernel loads, else
  the pure-torch path.

A kernel is imported at most once per process, and only once tensors are on CUDA: importing the
package, or running on a CPU, never loads a CUDA extension.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

_NOT_TRIED = object()


class CudaKernelUnavailableError(RuntimeError):
    """An option asks for a CUDA kernel that cannot run here (the message names the option and the fix)."""


class OptionalCudaKernel:
    """A CUDA kernel with a pure-torch twin, chosen by a command-line option (module docstring).

    Args:
        name: what the kernel is, for messages ("tiny-cuda-nn").
        choice: the option value that asks for it ("tcnn").
        option: the command-line flag that chooses ("--pipeline.model.field.implementation").
        load: imports the kernel and returns its module, or None when it cannot be used here; called
            at most once.
    """

    def __init__(self, name: str, choice: str, option: str, load: Callable[[], Optional[Any]]) -> None:
        self.name = name
        self.choice = choice
        self.option = option
        self._load = load
        self._module: Any = _NOT_TRIED

    def module(self) -> Optional[Any]:
        """The kernel's module, or None when it does not load here (imported once, then remembered)."""
        if self._module is _NOT_TRIED:
            self._module = self._load()
        return self._module

    def available(self) -> bool:
        """Whether the kernel loads on this machine (imports it on the first call)."""
        return self.module() is not None

    def use(self, implementation: str, on_cuda: bool) -> bool:
        """Whether to run the CUDA kernel for tensors that are (``on_cuda``) or are not on CUDA.

        Raises :class:`CudaKernelUnavailableError` when ``implementation`` asks for the kernel and it
        cannot run, and ``ValueError`` for a value other than ``auto``, the kernel's and ``torch``.
        """
        if implementation == "torch":
            return False
        if implementation == self.choice:
            if on_cuda and self.available():
                return True
            why = "the model is not on CUDA" if not on_cuda else f"{self.name} does not load on this machine"
            raise CudaKernelUnavailableError(
                f"{self.option} {self.choice} needs the model on CUDA and {self.name}, but {why}; "
                f"use {self.option} auto (or torch) on this machine."
            )
        if implementation != "auto":
            raise ValueError(f"{self.option} is auto, {self.choice} or torch, not {implementation!r}")
        return on_cuda and self.available()
