"""The shared atomic writer: complete files or none, the user's umask, a full disk that says so."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sparsefusion_ns.teacher.bundle import Teacher
from sparsefusion_ns.utils import atomic_files
from sparsefusion_ns.utils.atomic_files import (
    DiskFullError,
    atomic_file,
    atomic_folder,
    atomic_path,
    write_text_atomically,
)


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    try:
        yield 0o640
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    write_text_atomically(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_file(target, "wb") as file:
            file.write(b"half of the new")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    write_text_atomically(target, "new")
    assert target.read_text() == "new"


def test_outputs_get_the_users_umask(tmp_path, umask_027):
    write_text_atomically(tmp_path / "a.txt", "x")
    with atomic_path(tmp_path / "b.bin") as temporary:
        temporary.write_bytes(b"x")
    with atomic_folder(tmp_path / "folder") as staging:
        (staging / "c.bin").write_bytes(b"x")
        os.chmod(staging / "c.bin", 0o600)  # as safetensors creates its files
    assert [mode(p) for p in (tmp_path / "a.txt", tmp_path / "b.bin", tmp_path / "folder" / "c.bin")] == [umask_027] * 3


def test_teacher_files_get_the_users_umask(tmp_path, umask_027):
    folder = Teacher.tiny(seed=0).save_pretrained(tmp_path / "teacher")
    modes = {path.name: mode(path) for path in folder.iterdir()}
    assert modes == dict.fromkeys(
        ["eft.safetensors", "teacher_config.json", "unet.safetensors", "vae.safetensors"], umask_027
    )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to simulate a full disk")
def test_a_full_disk_says_so(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_text_atomically(target, "old")

    def temporary_on_a_full_disk(directory, name):
        return os.open("/dev/full", os.O_WRONLY), Path(directory) / f".{name}.full.partial"

    monkeypatch.setattr(atomic_files, "_temporary_file", temporary_on_a_full_disk)
    with pytest.raises(DiskFullError, match=r"No space left on device while writing .*metrics\.json.*is unchanged"):
        write_text_atomically(target, "new" * 100000)
    assert target.read_text() == "old"
