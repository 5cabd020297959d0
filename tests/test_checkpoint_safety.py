"""Checkpoints of the sparsefusion trainer: atomic saves, complete-only loads, resume length, divergence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sparsefusion_ns.engine.checkpoints import CheckpointError
from sparsefusion_ns.engine.eval_setup import eval_setup
from sparsefusion_ns.engine.trainer import TrainingDivergedError
from sparsefusion_ns.model.sparsefusion_model import SparseFusionModel
from sparsefusion_ns.utils import atomic_files
from sparsefusion_ns.utils.atomic_files import DiskFullError
from tests.tiny_training import tiny_trainer_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def small_config(scene: Path, output: Path, iterations: int, save_every: int, load_dir=None):
    config = tiny_trainer_config(scene, output, iterations, save_every=save_every, load_dir=load_dir)
    config.pipeline.datamanager.train_num_rays_per_batch = 128
    config.pipeline.model.num_uniform_samples = 8
    config.pipeline.model.num_importance_samples = 8
    return config


@pytest.fixture(scope="module")
def run(scene, tmp_path_factory):
    """6 iterations, checkpoints at steps 2, 4 and 5."""
    config = small_config(scene, tmp_path_factory.mktemp("run"), iterations=6, save_every=2)
    train(config)
    return config


def checkpoint_names(folder: Path):
    return sorted(path.name for path in folder.iterdir())


def test_a_save_killed_midway_leaves_the_earlier_checkpoints_only(scene, tmp_path, monkeypatch):
    config = small_config(scene, tmp_path, iterations=4, save_every=2)  # saves at steps 2 and 3
    real_save, calls = torch.save, []

    def killed_during_second_save(obj, destination, *args, **kwargs):
        calls.append(1)
        if len(calls) < 2:
            return real_save(obj, destination, *args, **kwargs)
        if isinstance(destination, (str, Path)):
            destination = open(destination, "wb")
        destination.write(b"PK\x03\x04 partial")  # the start of a zip file, then the process dies
        destination.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_during_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.undo()
    checkpoints = config.get_checkpoint_dir()
    assert checkpoint_names(checkpoints) == ["step-000000002.ckpt"]
    assert not [p.name for p in config.get_base_dir().iterdir() if p.name.endswith(".partial")]
    assert torch.load(checkpoints / "step-000000002.ckpt", weights_only=True)["step"] == 2


def test_resume_skips_partial_checkpoints_with_one_warning(run, scene, tmp_path, capsys):
    folder = tmp_path / "nerfstudio_models"
    folder.mkdir()
    for path in run.get_checkpoint_dir().iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    newest = folder / "step-000000005.ckpt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # cut short by a kill
    (folder / "step-000000006.ckpt").write_bytes(b"")  # a 0-byte file (full disk)
    resumed = small_config(scene, tmp_path / "resumed", iterations=6, save_every=2, load_dir=folder)
    trainer = resumed.setup(local_rank=0, world_size=1)
    trainer.setup()
    assert trainer._start_step == 5  # from step 4, the newest complete checkpoint
    out = capsys.readouterr().out.replace("\n", "")
    assert out.count("skipped 2 newer checkpoint") == 1
    assert "step-000000005.ckpt" in out and "step-000000006.ckpt" in out and "step-000000004.ckpt" in out


def test_an_explicit_broken_checkpoint_is_an_error_naming_it(run, scene, tmp_path):
    folder = tmp_path / "nerfstudio_models"
    folder.mkdir()
    (folder / "step-000000004.ckpt").write_bytes(b"")
    resumed = small_config(scene, tmp_path / "resumed", iterations=6, save_every=2, load_dir=folder)
    resumed.load_step = 4
    trainer = resumed.setup(local_rank=0, world_size=1)
    with pytest.raises(CheckpointError, match="step-000000004.ckpt.*incomplete or corrupt"):
        trainer.setup()


def test_evaluation_loads_the_newest_complete_checkpoint(scene, tmp_path, capsys):
    config = small_config(scene, tmp_path, iterations=4, save_every=2)
    train(config)
    config_path = config.get_base_dir() / "config.yml"
    checkpoints = config.get_checkpoint_dir()
    newest = checkpoints / "step-000000003.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])
    _, _, path, step = eval_setup(config_path)
    assert (path.name, step) == ("step-000000002.ckpt", 2)
    assert "step-000000003.ckpt" in capsys.readouterr().out.replace("\n", "")
    (checkpoints / "step-000000002.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        eval_setup(config_path)
    assert "step-000000002.ckpt" in str(error.value) and "step-000000003.ckpt" in str(error.value)


def test_nerfstudios_own_commands_load_the_newest_complete_checkpoint(scene, tmp_path, capsys):
    """ns-export, ns-viewer, ns-eval and ns-render load runs through nerfstudio's eval_setup."""
    from nerfstudio.utils.eval_utils import eval_setup as nerfstudio_eval_setup

    import sparsefusion_ns.plugin.method_configs  # noqa: F401  (what nerfstudio's method discovery imports)

    config = small_config(scene, tmp_path, iterations=4, save_every=2)
    train(config)
    newest = config.get_checkpoint_dir() / "step-000000003.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a partial file, as an older version could leave
    _, _, path, step = nerfstudio_eval_setup(config.get_base_dir() / "config.yml")
    assert (path.name, step) == ("step-000000002.ckpt", 2)
    assert "step-000000003.ckpt" in capsys.readouterr().out.replace("\n", "")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to simulate a full disk")
def test_a_full_disk_says_so_and_leaves_the_checkpoints_as_they_were(run, monkeypatch):
    trainer = run.setup(local_rank=0, world_size=1)
    trainer.setup()
    before = checkpoint_names(run.get_checkpoint_dir())

    def temporary_on_a_full_disk(directory, name):
        return os.open("/dev/full", os.O_WRONLY), Path(directory) / f".{name}.full.partial"

    monkeypatch.setattr(atomic_files, "_temporary_file", temporary_on_a_full_disk)
    with pytest.raises(DiskFullError, match="No space left on device while writing .*step-000000099.ckpt"):
        trainer.save_checkpoint(99)
    assert checkpoint_names(run.get_checkpoint_dir()) == before


def test_rerunning_the_same_command_after_a_resume_finishes_the_planned_run(run, scene, tmp_path, capsys):
    from nerfstudio.utils import writer

    resumed = small_config(scene, tmp_path / "a", iterations=6, save_every=2, load_dir=run.get_checkpoint_dir())
    resumed.load_step = 2
    trainer = train(resumed)
    assert trainer.step == 5  # steps 3, 4 and 5: the run ends where it was planned to
    assert checkpoint_names(resumed.get_checkpoint_dir())[-1] == "step-000000005.ckpt"
    assert writer.GLOBAL_BUFFER["max_iter"] == 6  # progress and ETA of the planned run

    finished = small_config(scene, tmp_path / "b", iterations=6, save_every=2, load_dir=run.get_checkpoint_dir())
    trainer = train(finished)
    assert "Nothing to train" in capsys.readouterr().out
    assert not finished.get_checkpoint_dir().exists()


def test_a_non_finite_loss_stops_training_before_any_nan_checkpoint(scene, tmp_path, monkeypatch):
    config = small_config(scene, tmp_path, iterations=8, save_every=2)
    real_loss_dict, calls = SparseFusionModel.get_loss_dict, []

    def nan_from_step_3(self, outputs, batch, metrics_dict=None):
        losses = real_loss_dict(self, outputs, batch, metrics_dict)
        calls.append(1)
        if len(calls) > 3:
            losses["rgb_loss"] = losses["rgb_loss"] * float("nan")
        return losses

    monkeypatch.setattr(SparseFusionModel, "get_loss_dict", nan_from_step_3)
    with pytest.raises(TrainingDivergedError, match="not finite at step 3.*rgb_loss nan"):
        train(config)
    checkpoints = config.get_checkpoint_dir()
    assert checkpoint_names(checkpoints) == ["step-000000002.ckpt"]
    state = torch.load(checkpoints / "step-000000002.ckpt", weights_only=True)
    assert all(torch.isfinite(value).all() for value in state["pipeline"].values() if value.is_floating_point())
