"""Output folders of command-line writers: never mix new files into a folder that holds data.

Every command that writes a folder (``sf-make-demo-scene``, ``sf-eval``, ``sf-export-density-mesh``,
``sf-convert-teacher``) calls :func:`prepare_output_folder` before it writes anything:

- a missing or empty folder is used (and created);
- a folder that holds anything is refused with an error naming it and the two fixes (another
  folder, or ``--overwrite``), unless the user passed ``--overwrite``;
- with ``--overwrite`` the command's own earlier outputs are deleted first, so that an interrupted
  run cannot leave an earlier result that looks current; other files in the folder are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List


class OutputFolderNotEmptyError(FileExistsError):
    """The output folder already holds files and the user did not pass ``--overwrite``."""


def _listing(entries: List[Path], limit: int = 4) -> str:
    names = [f"{entry.name}/" if entry.is_dir() else entry.name for entry in entries[:limit]]
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(names) + more


def prepare_output_folder(
    folder: Path,
    overwrite: bool,
    what: str,
    own_outputs: Iterable[str] = (),
    flag: str = "--overwrite",
    create: bool = True,
) -> Path:
    """Create ``folder`` for a writer, refusing one that is not empty unless ``overwrite``.

    Args:
        folder: the output folder.
        overwrite: the user asked to write into a non-empty folder.
        what: the command and option naming the folder in messages, e.g. ``"sf-eval --output-dir"``.
        own_outputs: glob patterns (relative to ``folder``) of the files this command writes; with
            ``overwrite`` they are deleted before anything new is written.
        flag: the option that allows a non-empty folder.
        create: create a missing folder (False for writers that assemble the folder elsewhere and
            rename it into place).

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} {folder} is a file, not a folder. Choose a folder to write into.")
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    if entries and not overwrite:
        raise OutputFolderNotEmptyError(
            f"{what} {folder} is not empty (it holds {_listing(entries)}). Writing into it would mix new "
            f"files with the ones there. Choose a new or empty folder, or pass {flag} to replace this "
            "command's earlier outputs in it."
        )
    if entries:
        for pattern in own_outputs:
            for path in folder.glob(pattern):
                if path.is_file() or path.is_symlink():
                    path.unlink()
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder
