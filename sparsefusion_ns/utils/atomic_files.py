"""Files and folders that appear complete or not at all.

Every writer of checkpoints, results and teacher folders in this package goes through here:

- :func:`atomic_file` opens a temporary file (beside the target, or in ``staging_dir``) and, only
  once the caller's block has finished without error, flushes it, ``fsync``s it, gives it the
  permissions any new file gets under the user's umask, renames it onto the target
  (``os.replace``, atomic on POSIX file systems) and syncs the directory. A crash, a kill or an
  exception at any point leaves the old file or the new one, never a partial one; on an error the
  temporary file is removed.
- :func:`atomic_path` does the same for writers that only take a path (safetensors, PIL).
- :func:`atomic_folder` does it for a folder of files (:func:`staging_folder_path` and
  :func:`commit_folder` for writers on several processes).
- A write that fails because the file system is full raises :class:`DiskFullError`, which says so
  and names the file, instead of a serializer's internal message (torch: "unexpected pos …").
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Optional, Tuple

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded")


class DiskFullError(OSError):
    """A write failed because the file system is full (or the user's disk quota is used up)."""


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, says that the file system is full."""
    seen = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if any(words in str(current) for words in _DISK_FULL_WORDS):  # e.g. safetensors' "(os error 28)"
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_full_error(path: Path, existed: bool) -> DiskFullError:
    """The error to raise when writing ``path`` ran out of space (the target is left as it was)."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    kept = f"{path} is unchanged" if existed else f"{path} was not created"
    return DiskFullError(
        errno.ENOSPC,
        f"No space left on device while writing {path} ({free} on its file system). Nothing half-written "
        f"was left: {kept}. Free some space, or write to another disk, and run the command again.",
    )


def current_umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_default_permissions(path: Path) -> None:
    """Give ``path`` the mode a newly created file gets (0666 minus the umask).

    Temporary files (``mkstemp``) and some writers (safetensors) create files readable by their
    owner only; outputs should be as readable as any other file the user writes."""
    os.chmod(path, 0o666 & ~current_umask())


def fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be synced)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _temporary_file(directory: Path, name: str) -> Tuple[int, Path]:
    """A new hidden temporary file for ``name`` in ``directory``: (open descriptor, path)."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=directory)
    return descriptor, Path(temporary)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _publish(temporary: Path, path: Path) -> None:
    apply_default_permissions(temporary)
    os.replace(temporary, path)
    fsync_directory(path.parent)


@contextmanager
def _staged(path: Path, staging_dir: Optional[Path]) -> Iterator[Tuple[int, Path]]:
    """What :func:`atomic_file` and :func:`atomic_path` share: a new staging file (open descriptor,
    path) that replaces ``path`` when the block succeeds and is removed when it fails (a full disk
    raised as :func:`disk_full_error`)."""
    path = Path(path)
    directory = Path(staging_dir) if staging_dir is not None else path.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    descriptor, temporary = _temporary_file(directory, path.name)
    try:
        yield descriptor, temporary
        _publish(temporary, path)
    except BaseException as error:
        _remove_quietly(temporary)
        if is_disk_full(error):
            raise disk_full_error(path, existed) from error
        raise


@contextmanager
def atomic_file(path: Path, mode: str = "wb", staging_dir: Optional[Path] = None) -> Iterator[IO]:
    """Write ``path`` through a temporary file that replaces it only when the block succeeds.

    Args:
        path: the file to create or replace.
        mode: ``open`` mode of the temporary file (``"wb"`` or ``"w"``).
        staging_dir: where the temporary file lives (default: ``path``'s folder); it must be on the
            same file system. Use it when other programs list ``path``'s folder and would trip over
            a temporary file there.
    """
    with _staged(path, staging_dir) as (descriptor, _), os.fdopen(descriptor, mode) as file:
        yield file
        file.flush()
        os.fsync(file.fileno())


@contextmanager
def atomic_path(path: Path, staging_dir: Optional[Path] = None) -> Iterator[Path]:
    """Like :func:`atomic_file`, for writers that take a file name: write to the yielded path."""
    with _staged(path, staging_dir) as (descriptor, temporary):
        os.close(descriptor)
        yield temporary
        _fsync_file(temporary)


def write_text_atomically(path: Path, text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically; returns ``path``."""
    with atomic_file(path, "wb") as file:
        file.write(text.encode("utf-8"))
    return Path(path)


def staging_folder_path(folder: Path, unique: bool = True) -> Path:
    """The hidden sibling a folder is assembled in before :func:`commit_folder` renames it.

    ``unique=False`` gives a fixed name, for writers on several processes that must agree on it."""
    folder = Path(folder)
    tag = f"partial-{uuid.uuid4().hex[:8]}" if unique else "partial"
    return folder.with_name(f".{folder.name}.{tag}")


def commit_folder(staging: Path, folder: Path) -> Path:
    """Make the complete folder ``staging`` appear as ``folder`` (replacing an existing one).

    Every file is synced and given the umask's permissions first; an existing ``folder`` is moved
    aside, replaced and then deleted, so a crash leaves the old folder or the new one (plus, at
    worst, a hidden ``.<name>.old-*`` or ``.<name>.partial*`` sibling), never a mix."""
    staging, folder = Path(staging), Path(folder)
    existed = folder.exists()
    try:
        for path in staging.rglob("*"):
            if path.is_file():
                apply_default_permissions(path)
                _fsync_file(path)
        fsync_directory(staging)
        if existed:
            retired = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
            folder.rename(retired)
            staging.rename(folder)
            shutil.rmtree(retired)
        else:
            staging.rename(folder)
        fsync_directory(folder.parent)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(folder, existed) from error
        raise
    return folder


@contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Assemble a folder in a hidden staging sibling (yielded) that replaces ``folder`` only when
    the block succeeds (:func:`commit_folder`); on an error the staging folder is removed."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    existed = folder.exists()
    staging = staging_folder_path(folder)
    staging.mkdir()
    try:
        yield staging
        commit_folder(staging, folder)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(error) and not isinstance(error, DiskFullError):
            raise disk_full_error(folder, existed) from error
        raise
