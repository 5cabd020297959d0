"""``sf-convert-teacher``: the authors' released checkpoints → one teacher folder.

Inputs (docs/method.md#released-checkpoints), per CO3D category:

- ``ckpt_latest_eft.pt``: ``torch.save`` dict whose ``model_state_dict`` is the EFT (278 tensors);
- ``ckpt_latest.pt``: the same for the VLDM, keys ``unets.0.*`` (477 tensors);
- the Stable Diffusion v1 VAE: an SD v1 ``.ckpt``/``.safetensors`` (its ``first_stage_model.*``
  tensors; the rest is ignored, as upstream) or a local diffusers VAE folder.

Output: a folder readable by :meth:`Teacher.from_pretrained` (see :mod:`.bundle`).

Safety and strictness:

- ``.pt``/``.ckpt`` files are read with ``torch.load(weights_only=True)``: files that need full
  unpickling (custom classes) are refused, never executed.
- Every component must match its architecture key for key and shape for shape; the error lists
  the offending keys. The authors' own EFT loader silently keeps only the checkpoint keys the
  model has; we refuse extra keys unless ``--allow-extra-eft-keys`` is given, and then name every
  dropped key in a warning. Missing keys are always an error (upstream would leave them random).
- Nothing half-written is left behind: the folder appears complete or not at all.

Conversion only renames tensors and checks them against a model built on the meta device, so it
needs memory for the checkpoints, not for a materialised teacher.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import torch
import tyro
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import Tensor

from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns import __version__
from sparsefusion_ns.teacher.bundle import (
    Teacher,
    TeacherConfig,
    check_teacher_state_dicts,
    expected_state_dict_shapes,
    write_teacher_folder,
)
from sparsefusion_ns.teacher.unet import AUTHORS_KEY_PREFIX
from sparsefusion_ns.teacher.vae import (
    LDM_CHECKPOINT_PREFIX,
    FrozenVAE,
    VAEConfig,
    ldm_vae_to_diffusers,
    vae_state_dict_from_sd_checkpoint,
)
from sparsefusion_ns.utils.output_folders import prepare_output_folder

AUTHORS_STATE_DICT_KEY = "model_state_dict"
"""Entry of the authors' ``.pt`` dicts that holds the model tensors."""


def torch_load_weights_only(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers (memory-mapped when the format allows).

    Raises ``ValueError`` naming ``path`` if the file needs full unpickling or is not a torch file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (or is not a file)")
    try:
        # mmap reads tensors lazily; only the zip-based format (torch ≥ 1.6) supports it
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError, … depending on the content
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # torch's message carries terminal colours
        if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in text:
            # torch's own message suggests weights_only=False, i.e. running the file's code: not quoted
            named = re.search(r"GLOBAL ([\w.]+)", text)
            content = f"the Python object {named.group(1)}" if named else "Python objects"
            raise ValueError(
                f"{path} could not be read with torch.load(weights_only=True): it holds {content} besides tensors "
                "and plain containers. Nothing in it was run, and sf-convert-teacher never unpickles such objects: "
                "unpickling can run arbitrary code. What is safe: use the authors' released checkpoint files as "
                "downloaded (they load as they are), or ask whoever made this file for its tensors alone (a "
                ".safetensors file, or a torch.save of a dict of tensors)."
            ) from None
        first_line = text.splitlines()[0] if text else ""
        raise ValueError(
            f"{path} could not be read with torch.load(weights_only=True): it is not a complete PyTorch file "
            f"({type(error).__name__}: {first_line}). Check that its download or copy finished (compare its size "
            "with the source's) and try again."
        ) from error


def _tensor_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(v, Tensor) for v in value.values())


def load_authors_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The ``model_state_dict`` of an authors' ``.pt`` file and its plain top-level entries (e.g. ``step``)."""
    content = torch_load_weights_only(path)
    if not isinstance(content, Mapping) or not _tensor_dict(content.get(AUTHORS_STATE_DICT_KEY)):
        entries = sorted(content) if isinstance(content, Mapping) else type(content).__name__
        raise ValueError(
            f"{path} is not an authors' SparseFusion checkpoint: expected a dict with a "
            f"'{AUTHORS_STATE_DICT_KEY}' of tensors, found {entries}"
        )
    counters = {k: v for k, v in content.items() if isinstance(v, (bool, int, float, str))}
    return dict(content[AUTHORS_STATE_DICT_KEY]), counters


def read_sd_vae_tensors(path: Path) -> dict[str, Tensor]:
    """The ldm-layout VAE tensors of a Stable Diffusion v1 ``.ckpt`` (under ``state_dict``) or
    ``.safetensors`` file: its ``first_stage_model.*`` entries, prefix stripped (all entries if none
    has it, for a bare VAE file). Other tensors are not read into memory."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (or is not a file)")
        with safetensors.safe_open(path, framework="pt", device="cpu") as file:
            keys = [key for key in file.keys() if key.startswith(LDM_CHECKPOINT_PREFIX)] or list(file.keys())
            return vae_state_dict_from_sd_checkpoint({key: file.get_tensor(key) for key in keys})
    content = torch_load_weights_only(path)  # memory-mapped: unused tensors are never read
    if isinstance(content, Mapping) and _tensor_dict(content.get("state_dict")):
        content = content["state_dict"]
    if not _tensor_dict(content):
        raise ValueError(f"{path} holds no Stable Diffusion state dict (expected tensors under 'state_dict')")
    return vae_state_dict_from_sd_checkpoint(content)


def read_vae_weights(path: Path, config: VAEConfig) -> dict[str, Tensor]:
    """Diffusers-layout VAE tensors from a diffusers VAE folder or a Stable Diffusion v1 checkpoint file."""
    path = Path(path)
    if path.is_dir():
        return FrozenVAE.from_diffusers_folder(path, config).autoencoder.state_dict()
    if not path.exists():
        raise FileNotFoundError(
            f"VAE weights {path} do not exist: give a Stable Diffusion v1 .ckpt/.safetensors file "
            "or a local diffusers VAE folder"
        )
    return ldm_vae_to_diffusers(read_sd_vae_tensors(path), levels=len(config.block_out_channels))


def prepare_teacher_state_dicts(
    config: TeacherConfig,
    eft: Mapping[str, Tensor],
    vldm: Mapping[str, Tensor],
    vae: Mapping[str, Tensor],
    allow_extra_eft_keys: bool = False,
    sources: Mapping[str, str] | None = None,
) -> tuple[dict[str, dict[str, Tensor]], list[str]]:
    """Rename the authors' tensors to the teacher's layout and check them against ``config``.

    Args:
        config: the teacher architecture the tensors must fill.
        eft: the EFT ``model_state_dict`` (authors' keys are already ours).
        vldm: the VLDM ``model_state_dict``; ``unets.0.`` is stripped.
        vae: diffusers-layout VAE tensors (see :func:`read_vae_weights`).
        allow_extra_eft_keys: drop EFT keys the model lacks (as the authors' loader does) instead of failing.
        sources: component → file name, for error messages.

    Returns:
        The component state dicts, and the EFT keys that were dropped.
    """
    eft = dict(eft)
    dropped: list[str] = []
    if allow_extra_eft_keys:
        known = expected_state_dict_shapes(config)["eft"]
        dropped = sorted(key for key in eft if key not in known)
        eft = {key: value for key, value in eft.items() if key in known}
    state_dicts = {
        "eft": eft,
        "unet": {key.removeprefix(AUTHORS_KEY_PREFIX): value for key, value in vldm.items()},
        "vae": dict(vae),
    }
    check_teacher_state_dicts(config, state_dicts, sources)
    return state_dicts, dropped


def convert_teacher(
    eft: Path,
    vldm: Path,
    vae: Path,
    output: Path,
    config: TeacherConfig | None = None,
    allow_extra_eft_keys: bool = False,
    overwrite: bool = False,
    console: Console = CONSOLE,
) -> Path:
    """Read the authors' EFT and VLDM checkpoints and an SD v1 VAE, check them, and write a teacher folder.

    ``config`` defaults to the released architecture (:meth:`TeacherConfig.full`).
    """
    config = config if config is not None else TeacherConfig.full()
    output = Path(output)
    # the folder is assembled beside it and renamed into place, so it is not created here
    prepare_output_folder(output, overwrite, "sf-convert-teacher --output", create=False)

    with console.status(f"Reading the EFT checkpoint {escape(str(eft))} …"):
        eft_tensors, eft_counters = load_authors_checkpoint(eft)
    console.print(f"[green]✓[/] EFT: {len(eft_tensors)} tensors from {escape(str(eft))}{_counters(eft_counters)}")
    with console.status(f"Reading the VLDM checkpoint {escape(str(vldm))} …"):
        vldm_tensors, vldm_counters = load_authors_checkpoint(vldm)
    console.print(f"[green]✓[/] VLDM: {len(vldm_tensors)} tensors from {escape(str(vldm))}{_counters(vldm_counters)}")
    with console.status(f"Reading the VAE {escape(str(vae))} …"):
        vae_tensors = read_vae_weights(vae, config.vae)
    console.print(f"[green]✓[/] VAE: {len(vae_tensors)} tensors from {escape(str(vae))}")

    with console.status("Checking every tensor against the teacher architecture …"):
        state_dicts, dropped = prepare_teacher_state_dicts(
            config,
            eft_tensors,
            vldm_tensors,
            vae_tensors,
            allow_extra_eft_keys=allow_extra_eft_keys,
            sources={"eft": str(eft), "unet": str(vldm), "vae": str(vae)},
        )
    if dropped:
        console.print(
            f"[bold yellow]Warning:[/] dropped {len(dropped)} EFT checkpoint tensors the model does not have "
            f"(--allow-extra-eft-keys): {escape(', '.join(dropped))}",
            soft_wrap=True,
        )
    provenance = {
        "converted_by": f"sparsefusion-ns {__version__} sf-convert-teacher",
        "eft": {"file": Path(eft).name, **eft_counters, "dropped_keys": dropped},
        "vldm": {"file": Path(vldm).name, **vldm_counters},
        "vae": {"file": Path(vae).name},
    }
    with console.status(f"Writing {escape(str(output))} …"):
        # an existing folder is empty, or the user passed --overwrite (checked above)
        write_teacher_folder(output, config, state_dicts, provenance, overwrite=True)

    with torch.device("meta"):
        parameter_counts = Teacher(config).parameter_counts()
    table = Table(title=f"Teacher written to {escape(str(output))}")
    for column in ("component", "tensors", "parameters"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for name, tensors in state_dicts.items():
        table.add_row(name, str(len(tensors)), f"{parameter_counts[name]:,}")
    table.add_row("total", str(sum(map(len, state_dicts.values()))), f"{parameter_counts['total']:,}")
    console.print(table)
    return output


def _counters(counters: Mapping[str, Any]) -> str:
    return escape(" (" + ", ".join(f"{k}={v}" for k, v in counters.items()) + ")") if counters else ""


@dataclass
class ConvertTeacher:
    """Convert the authors' released SparseFusion checkpoints into a sparsefusion-ns teacher folder."""

    eft: Path
    """The authors' EFT checkpoint, ckpt_latest_eft.pt."""
    vldm: Path
    """The authors' VLDM checkpoint, ckpt_latest.pt."""
    vae: Path
    """The Stable Diffusion v1 VAE: an SD v1 .ckpt/.safetensors file or a local diffusers VAE folder."""
    output: Path
    """The teacher folder to create."""
    allow_extra_eft_keys: bool = False
    """Drop (with a warning) EFT checkpoint tensors the model lacks, as the authors' loader does silently."""
    overwrite: bool = False
    """Replace an existing, non-empty output folder (all of its contents)."""

    def main(self) -> None:
        """Run the conversion; errors are printed without a traceback and exit with status 1."""
        try:
            convert_teacher(
                self.eft,
                self.vldm,
                self.vae,
                self.output,
                allow_extra_eft_keys=self.allow_extra_eft_keys,
                overwrite=self.overwrite,
            )
        except (OSError, ValueError) as error:  # OSError: missing inputs, output refused, disk full
            CONSOLE.print(f"[bold red]Error:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
            raise SystemExit(1) from error


def entrypoint() -> None:
    """Entry point of the ``sf-convert-teacher`` console script."""
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(ConvertTeacher).main()


if __name__ == "__main__":
    entrypoint()
