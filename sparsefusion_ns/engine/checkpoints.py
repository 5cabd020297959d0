"""nerfstudio checkpoints of sparsefusion runs: written atomically, loaded only when complete.

A run's checkpoints are nerfstudio's ``nerfstudio_models/step-<9 digits>.ckpt`` files (``torch.save``
dicts with ``step``, ``pipeline``, ``optimizers``, ``schedulers`` and ``scalers``), so nerfstudio's own
commands read them too. nerfstudio writes them in place: a training killed while saving, or a full
disk, leaves a partial newest file that every later load picks and dies on (``EOFError``,
"PytorchStreamReader failed …") without naming it.

- :func:`save_checkpoint` writes through a temporary file outside ``nerfstudio_models/`` (nerfstudio
  parses the step of every name it finds there) that is renamed into place once complete
  (:mod:`sparsefusion_ns.utils.atomic_files`); a full disk raises ``DiskFullError``.
- :func:`load_checkpoint` reads the newest *complete* checkpoint. A partial or corrupt file (from an
  older version, or a crash of another writer) is skipped with one warning naming it; if no
  complete checkpoint is left, or the one asked for by step is broken, the error names the files.

All reads use ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from rich.markup import escape

from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.utils.atomic_files import atomic_file

CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.ckpt$")
"""File names of nerfstudio checkpoints; the number is the step."""


class CheckpointError(RuntimeError):
    """No complete checkpoint can be loaded (the message names the files and the fix)."""


def checkpoint_path(directory: Path, step: int) -> Path:
    """Where nerfstudio keeps the checkpoint of ``step``."""
    return Path(directory) / f"step-{step:09d}.ckpt"


def list_checkpoints(directory: Path) -> List[Tuple[int, Path]]:
    """(step, path) of every checkpoint file in ``directory``, oldest first (complete or not)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """A checkpoint's contents (``weights_only=True``); :class:`CheckpointError` naming ``path`` if it
    is missing, partial or not a nerfstudio checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        # mmap: a valid file's tensors are read lazily, so trying an older file after a bad one is cheap
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # EOFError, RuntimeError (PytorchStreamReader), UnpicklingError, …
        size = path.stat().st_size
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"Checkpoint {path} ({size} bytes) is incomplete or corrupt ({type(error).__name__}: {first_line}). "
            "A training interrupted while saving, or a full disk, leaves such a file. Delete it; the earlier "
            "checkpoints beside it are used instead."
        ) from error
    if not isinstance(state, Mapping) or not {"step", "pipeline"} <= set(state):
        raise CheckpointError(f"{path} is not a nerfstudio checkpoint (expected a dict with 'step' and 'pipeline').")
    return dict(state)


def load_checkpoint(directory: Path, step: Optional[int] = None) -> Tuple[Path, Dict[str, Any]]:
    """The newest complete checkpoint of ``directory`` (or the one of ``step``): (path, contents).

    Partial or corrupt newer files are skipped with one warning that names them."""
    directory = Path(directory)
    if step is not None:
        path = checkpoint_path(directory, step)
        if not path.is_file():
            steps = [found for found, _ in list_checkpoints(directory)]
            raise CheckpointError(f"No checkpoint of step {step} in {directory}; it holds steps {steps or 'none'}.")
        return path, read_checkpoint(path)
    checkpoints = list_checkpoints(directory)
    if not checkpoints:
        raise CheckpointError(
            f"No checkpoint (step-*.ckpt) in {directory}. Checkpoints are written every --steps-per-save "
            "steps and at the end of training."
        )
    broken: List[CheckpointError] = []
    for _, path in reversed(checkpoints):
        try:
            state = read_checkpoint(path)
        except CheckpointError as error:
            broken.append(error)
            continue
        if broken:
            CONSOLE.print(
                f"[bold yellow]Warning:[/bold yellow] skipped {len(broken)} newer checkpoint file(s) that cannot be "
                f"read, using {escape(str(path))} instead. " + " ".join(escape(str(error)) for error in broken),
                soft_wrap=True,
            )
        return path, state
    raise CheckpointError(
        f"None of the {len(checkpoints)} checkpoint files in {directory} can be read: "
        + " ".join(str(error) for error in broken)
    )


def save_checkpoint(path: Path, state: Mapping[str, Any], staging_dir: Path) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically, through a temporary file in ``staging_dir``
    (same file system, outside the checkpoint folder)."""
    with atomic_file(path, "wb", staging_dir=staging_dir) as file:
        torch.save(dict(state), file)
    return Path(path)
