"""Checking tensors against a model before loading them: the project's one state-dict checker.

Every teacher component (EFT, VLDM UNet, VAE) and every teacher folder is loaded strictly: the
tensors must have exactly the model's keys and shapes. :func:`check_state_dict` compares them and
raises :class:`StateDictMismatchError`, one error type for all components, whose message names the
source, the expected architecture and every missing, unexpected or wrongly shaped key.
:func:`state_dict_shapes` gives the keys and shapes a module expects (built on the meta device, without
allocating it).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

DEFAULT_HINT = "Check that the file is the right one for this component and this architecture."
"""Last line of a mismatch message unless the caller knows a more specific fix."""


class StateDictMismatchError(ValueError):
    """A state dict does not fit a model: keys are missing, unexpected or wrongly shaped."""


def state_dict_shapes(module: nn.Module) -> dict[str, torch.Size]:
    """Key → shape of ``module``'s state dict (a module built on the meta device works: no memory)."""
    return {key: value.shape for key, value in module.state_dict().items()}


def check_state_dict(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    found: Mapping[str, Tensor],
    architecture: str,
    source: str,
    hint: str = DEFAULT_HINT,
    max_listed: int = 12,
) -> None:
    """Raise :class:`StateDictMismatchError` unless ``found`` has exactly the ``expected`` keys and shapes.

    Args:
        expected: key → shape of the model that should receive the tensors.
        found: the tensors to load (meta tensors work too).
        architecture: a human-readable name of the expected architecture, used in the message.
        source: where ``found`` comes from (a file name), used in the message.
        hint: the message's last line: what to check or do.
        max_listed: how many keys of each kind the message lists before summarising.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = [
        f"{key}: found {tuple(found[key].shape)}, expected {tuple(expected[key])}"
        for key in sorted(set(expected) & set(found))
        if tuple(found[key].shape) != tuple(expected[key])
    ]
    if not (missing or unexpected or wrong_shape):
        return

    def listing(title: str, items: list[str]) -> str:
        shown = "\n".join(f"    {item}" for item in items[:max_listed])
        more = f"\n    … and {len(items) - max_listed} more" if len(items) > max_listed else ""
        return f"  {title} ({len(items)}):\n{shown}{more}"

    parts = [
        listing(title, items)
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
        if items
    ]
    raise StateDictMismatchError(
        f"{source} does not match the expected architecture {architecture} "
        f"({len(expected)} tensors expected, {len(found)} found):\n" + "\n".join(parts) + "\n" + hint
    )
