"""``sf-train-teacher --stage vae``: the autoencoder trains, checkpoints, resumes bit-exactly, and the
folder it writes is the VAE of a later joint stage (with its measured latent scale)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from sparsefusion_ns.teacher.bundle import Teacher
from sparsefusion_ns.teacher_training.checkpoints import MODEL_FILE, list_checkpoints
from sparsefusion_ns.teacher_training.config import DataConfig, TeacherTrainingConfig, VAEStageConfig
from sparsefusion_ns.teacher_training.trainer import train
from sparsefusion_ns.teacher_training.vae_stage import StepBatches, read_vae_report
from tests.co3d_fixture import Co3dFixtureConfig, write_co3d_fixture
from tests.torch_threads import torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):  # bit-exact comparisons need a fixed thread count
        yield


@pytest.fixture(scope="module")
def co3d(tmp_path_factory):
    """Two training and one test sequence of 12 frames (more than the 10 Co3dScenes requires)."""
    return write_co3d_fixture(
        tmp_path_factory.mktemp("co3d"),
        Co3dFixtureConfig(num_train_sequences=2, num_dev_sequences=0, num_test_sequences=1,
                          frames_per_sequence=12, image_size_hw=(48, 64)),
    )  # fmt: skip


def vae_config(co3d, output: Path, **overrides) -> TeacherTrainingConfig:
    settings = dict(
        output=output,
        data=DataConfig(root=co3d.root, categories=(co3d.category,)),
        architecture="tiny",
        stage="vae",
        vae_stage=VAEStageConfig(batch_size=4, learning_rate=1e-3, scale_frames=8, eval_frames=6),
        max_steps=6,
        num_workers=0,
        log_every=2,
        sample_every=3,
        checkpoint_every=3,
        keep_checkpoints=0,
        progress=False,
    )
    settings.update(overrides)
    return TeacherTrainingConfig(**settings)


@pytest.fixture(scope="module")
def trained(co3d, tmp_path_factory):
    config = vae_config(co3d, tmp_path_factory.mktemp("runs") / "vae")
    train(config)
    return config


def test_batches_depend_only_on_seed_and_step():
    from_start = iter(StepBatches(100, 4, seed=3, start_step=0))
    batches = [next(from_start) for _ in range(5)]
    resumed = iter(StepBatches(100, 4, seed=3, start_step=3))
    assert [next(resumed), next(resumed)] == batches[3:]
    assert len({tuple(b) for b in batches}) == 5


def test_writes_checkpoints_samples_a_diffusers_folder_and_a_report(trained):
    output = Path(trained.output)
    assert [step for step, _ in list_checkpoints(output)] == [3, 6]
    assert sorted(p.name for p in (output / "samples").iterdir()) == ["step-00000003.png", "step-00000006.png"]
    config = json.loads((output / "vae" / "config.json").read_text())
    report = read_vae_report(output)
    assert config["scaling_factor"] == pytest.approx(report["scaling_factor"]) and report["scaling_factor"] > 0
    assert report["steps"] == 6 and report["training_frames"] == 24
    held_out = report["held_out_reconstruction"]  # the fixture's test sequence (fewview_test)
    assert held_out["frames"] == 6 and 5.0 < held_out["psnr_mean"] < 60.0


def test_the_loss_falls(co3d, tmp_path):
    config = vae_config(co3d, tmp_path / "longer", max_steps=30, log_every=10, sample_every=0, checkpoint_every=30)
    run = train(config)
    assert run.step == 30
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(config.output) / "tensorboard"))
    events.Reload()
    l1 = [event.value for event in events.Scalars("loss/l1_per_value")]
    assert l1[-1] < 0.8 * l1[0], l1


def test_resume_reproduces_the_uninterrupted_run_exactly(trained, co3d, tmp_path):
    first = vae_config(co3d, tmp_path / "resumed", max_steps=3)
    train(first)
    train(vae_config(co3d, tmp_path / "resumed", resume=True))
    ours = safetensors.torch.load_file(tmp_path / "resumed" / "checkpoints" / "step-00000006" / MODEL_FILE)
    reference = safetensors.torch.load_file(Path(trained.output) / "checkpoints" / "step-00000006" / MODEL_FILE)
    assert ours.keys() == reference.keys()
    for key in reference:
        assert torch.equal(ours[key], reference[key]), key


def test_a_joint_stage_uses_the_trained_vae_and_its_scale(trained, co3d, tmp_path):
    vae_folder = Path(trained.output) / "vae"
    joint = TeacherTrainingConfig(
        output=tmp_path / "joint", data=DataConfig(root=co3d.root, categories=(co3d.category,)), vae=vae_folder,
        architecture="tiny", max_steps=1, num_workers=0, sample_every=0, progress=False,
    )  # fmt: skip
    run = train(joint)
    teacher = Teacher.from_pretrained(run.teacher)
    assert teacher.config.vae.scaling_factor == pytest.approx(read_vae_report(trained.output)["scaling_factor"])
    trained_vae = safetensors.torch.load_file(vae_folder / "diffusion_pytorch_model.safetensors")
    for key, value in teacher.vae.autoencoder.state_dict().items():
        assert torch.equal(value, trained_vae[key]), key


def test_the_vae_stage_refuses_an_init_teacher(tmp_path):
    with pytest.raises(ValueError, match="--stage vae"):
        TeacherTrainingConfig(output=tmp_path, stage="vae", init_teacher=tmp_path)
