"""Resumable training checkpoints: weights, optimiser, schedule, random states and step.

One folder per checkpoint, ``<output>/checkpoints/step-<8 digits>/``::

    trainer_state.json     format, step, examples seen, process count, LR schedule, fp16 loss
                           scale, teacher architecture, training options (plain JSON)
    model.safetensors      TeacherTrainingModel state dict (eft.*, unet.*; BatchNorm statistics included)
    optimizer.pt           the optimiser's state dict (tensors and plain containers only:
                           read back with torch.load(weights_only=True))
    rng_state_<rank>.json  each process's Python, NumPy, torch CPU (and CUDA) generator states

The data order needs no state: it is a function of the seed and the number of examples seen
(:mod:`.datasets`). Restoring all of the above makes a resumed run take exactly the steps the
uninterrupted run would have taken (bit for bit on the CPU; on GPUs up to the non-determinism of
their kernels).

Folders appear complete or not at all: they are written into a hidden sibling, synced and renamed
(:mod:`sparsefusion_ns.utils.atomic_files`). With several machines, ``<output>`` must be on a file
system they share.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import safetensors.torch
import torch
from accelerate import Accelerator
from torch import nn
from torch.optim import Optimizer

from sparsefusion_ns.utils.atomic_files import commit_folder, staging_folder_path, write_text_atomically

FORMAT_NAME = "sparsefusion-ns-teacher-training-checkpoint"
FORMAT_VERSION = 1
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"


def checkpoint_folder(output: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives."""
    return Path(output) / "checkpoints" / f"step-{step:08d}"


def list_checkpoints(output: Path) -> List[Tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of a run, oldest first."""
    found = []
    for folder in (Path(output) / "checkpoints").glob("step-*"):
        suffix = folder.name.removeprefix("step-")
        if suffix.isdigit() and (folder / STATE_FILE).is_file():
            found.append((int(suffix), folder))
    return sorted(found)


def capture_rng_state() -> Dict[str, Any]:
    """This process's global random generator states as JSON-ready values."""
    python_version, python_internal, python_gauss = random.getstate()
    numpy_name, numpy_keys, numpy_position, numpy_has_gauss, numpy_cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": [python_version, list(python_internal), python_gauss],
        "numpy": [numpy_name, numpy_keys.tolist(), int(numpy_position), int(numpy_has_gauss), float(numpy_cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def save_checkpoint(
    accelerator: Accelerator,
    folder: Path,
    model: nn.Module,
    optimizer: Optimizer,
    trainer_state: Mapping[str, Any],
    keep: int = 0,
) -> Path:
    """Write a checkpoint (every process must call this; ``model`` unwrapped). Keeps the newest ``keep`` (0: all)."""
    folder = Path(folder)
    staging = staging_folder_path(folder, unique=False)  # every process must name the same folder
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rng_file = staging / f"rng_state_{accelerator.process_index}.json"
    write_text_atomically(rng_file, json.dumps(capture_rng_state()))  # synced by the process that wrote it
    if accelerator.is_main_process:
        tensors = {key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()}
        safetensors.torch.save_file(tensors, staging / MODEL_FILE, metadata={"format": FORMAT_NAME})
        torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
        state = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **trainer_state}
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        commit_folder(staging, folder)
        if keep:
            for _, old in list_checkpoints(folder.parent.parent)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return folder


def read_trainer_state(folder: Path) -> Dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint folder, after checking its format."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a training checkpoint: {STATE_FILE} is missing")
    state = json.loads(path.read_text())
    if state.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a {FORMAT_NAME!r} file")
    if not isinstance(state.get("format_version"), int) or state["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {state.get('format_version')!r}; upgrade sparsefusion-ns to read it"
        )
    return state


def load_checkpoint(
    folder: Path, model: nn.Module, optimizer: Optimizer, process_index: int
) -> Tuple[Dict[str, Any], Optional[str]]:
    """Load weights, optimiser and this process's random states; return (trainer state, a warning or None).

    The warning says when no random state was saved for this process (a resume on more processes
    than the run was saved from): those processes then continue from their fresh seeds.
    """
    folder = Path(folder)
    state = read_trainer_state(folder)
    model.load_state_dict(safetensors.torch.load_file(folder / MODEL_FILE), strict=True)
    optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    rng_file = folder / f"rng_state_{process_index}.json"
    if not rng_file.is_file():
        return state, f"{folder} holds no random state for process {process_index}; it continues from a fresh seed"
    restore_rng_state(json.loads(rng_file.read_text()))
    return state, None


def resolve_resume(output: Path, resume: bool, resume_from: Optional[Path]) -> Optional[Path]:
    """The checkpoint a run continues from (``--resume``: the newest in ``output``; ``--resume-from``:
    that folder), or None for a new run; a new run over an existing one is refused."""
    if resume_from is not None:
        read_trainer_state(resume_from)  # fails early on a wrong folder
        return Path(resume_from)
    existing = list_checkpoints(output)
    if resume:
        if not existing:
            raise FileNotFoundError(
                f"--resume: {output}/checkpoints holds no checkpoint; drop --resume to start a new run"
            )
        return existing[-1][1]
    if existing:
        raise FileExistsError(
            f"{output} already holds checkpoints (newest: step {existing[-1][0]}); pass --resume to continue "
            "that run, or choose another --output"
        )
    if Path(output).is_dir() and any(Path(output).iterdir()):
        held = ", ".join(sorted(path.name for path in Path(output).iterdir())[:4])
        raise FileExistsError(
            f"--output {output} is not empty (it holds {held}) but has no checkpoint to resume: a new run would "
            "mix its files with those. Choose a new or empty --output folder."
        )
    return None
