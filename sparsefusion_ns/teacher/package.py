"""``sf-package-teacher``: a trained teacher folder as a small, self-describing folder to ship.

    sf-package-teacher --input runs/mini_joint/teacher --output teachers/critter-mini --dtype float16 \\
        --attach category=data/synthetic/critter/synthetic_category.json vae_stage=runs/mini_vae/vae_report.json \\
        --recipe scripts/train_mini_teacher.sh

The weights are stored in ``--dtype`` (float16 halves the size; loading casts back to float32), and
the provenance in ``teacher_config.json`` gains what the folder alone cannot say: the JSON records
given with ``--attach`` (e.g. how the training data was generated, the VAE stage's report), the
recipe script's text (the exact commands), and the parameter counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

import torch
import tyro
from rich.markup import escape

from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.teacher.bundle import Teacher

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class PackageTeacher:
    """Options of ``sf-package-teacher``."""

    input: Path
    """Teacher folder to package (as written by sf-train-teacher or sf-convert-teacher)."""
    output: Path
    """Folder to write."""
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    """Precision of the stored weights."""
    attach: Tuple[str, ...] = ()
    """``name=path.json`` records added to the provenance under ``name``."""
    recipe: Optional[Path] = None
    """A script whose text (the exact commands that made the teacher) is added to the provenance."""
    overwrite: bool = False
    """Replace an existing ``output`` folder."""


def package_teacher(options: PackageTeacher) -> Path:
    """Write the packaged folder; returns it."""
    teacher = Teacher.from_pretrained(options.input)
    provenance = dict(teacher.provenance)
    for item in options.attach:
        name, separator, path = item.partition("=")
        if not separator or not name:
            raise ValueError(f"--attach {item!r}: expected name=path.json")
        provenance[name] = json.loads(Path(path).read_text())
    if options.recipe is not None:
        provenance["recipe"] = {"file": Path(options.recipe).name, "text": Path(options.recipe).read_text()}
    provenance["packaged"] = {
        "from": str(options.input),
        "dtype": options.dtype,
        "parameters": teacher.parameter_counts(),
    }
    teacher.provenance = provenance
    return teacher.save_pretrained(options.output, overwrite=options.overwrite, dtype=DTYPES[options.dtype])


def entrypoint() -> None:
    """Entry point of the ``sf-package-teacher`` console script."""
    options = tyro.cli(PackageTeacher)
    try:
        folder = package_teacher(options)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        CONSOLE.print(f"[bold red]Error:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
        raise SystemExit(1) from error
    size = sum(path.stat().st_size for path in folder.iterdir()) / 2**20
    CONSOLE.print(f"Wrote {escape(str(folder))} ({size:.1f} MiB, {options.dtype})")


if __name__ == "__main__":
    entrypoint()
