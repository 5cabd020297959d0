"""The distillation through nerfstudio's own trainer: both phases, determinism, resuming, start-up errors.

Sizes are tiny so each run takes seconds on a CPU: a random `Teacher.tiny` (64² images, 8² latents),
12-view 32² demo scene, 16² renders of a 9-camera pool, PLMS capped at 8 steps, 6 iterations of
which steps 0-2 bootstrap and 3-5 distil the diffusion model.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import tyro

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import Trainer, TrainerConfig

from sparsefusion_ns.distillation.callbacks import NovelViewStep, TeacherLoadError
from sparsefusion_ns.metrics import LPIPSVGG, LPIPSWeightsNotFoundError
from sparsefusion_ns.plugin.method_configs import sparsefusion_config
from tests.tiny_training import tiny_trainer_config

ITERATIONS = 6
BOOTSTRAP = 2  # steps 0, 1, 2 bootstrap; 3, 4, 5 diffusion
POOL_SIZE = 3 + 4 + 2  # input views + circle cameras + random orbit cameras

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory) -> Path:
    """A random VGG-16 trunk in torchvision's layout (the real file is not available offline)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        trunk = {f"features.{key}": value for key, value in LPIPSVGG().features.state_dict().items()}
    path = tmp_path_factory.mktemp("lpips") / "vgg16_random.pth"
    torch.save(trunk, path)
    return path


def distillation_config(
    scene: Path,
    output: Path,
    teacher: Path,
    vgg_weights: Optional[Path],
    iterations: int = ITERATIONS,
    save_every: Optional[int] = None,
    load_dir: Optional[Path] = None,
) -> TrainerConfig:
    config = tiny_trainer_config(scene, output, iterations, save_every=save_every, load_dir=load_dir)
    config.logging.steps_per_log = 1
    model = config.pipeline.model
    model.teacher = teacher
    model.lpips_vgg_weights = vgg_weights
    distillation = model.distillation
    distillation.pool.num_circle_cameras = 4
    distillation.pool.num_random_cameras = 2
    distillation.render_resolution = 16
    distillation.bootstrap_iterations = BOOTSTRAP
    distillation.plms_max_steps = 8
    distillation.log_images_every = 2
    distillation.schedule = "authors"  # the paper's, unchanged (test_distillation_schedules.py: cached)
    return config


def seed_everything(seed: int = 0) -> None:
    """What ns-train does with --machine.seed before building the trainer."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def reseed_at(step: int) -> TrainingCallback:
    """Reset the global generators before ``step``. Nerfstudio's step (A) draws its rays (and the
    render its stratified samples) from them and its checkpoints do not store them: this lines up
    a run resumed at ``step`` with an uninterrupted one. Step (B)'s own stream is checkpointed."""
    return TrainingCallback(
        [TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], lambda step: seed_everything(7), iters=(step,)
    )


def run(config: TrainerConfig, extra_callbacks: tuple = ()) -> Trainer:
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.callbacks.extend(extra_callbacks)
    trainer.train()
    return trainer


def step_b(trainer: Trainer) -> NovelViewStep:
    (callback,) = [c.func for c in trainer.callbacks if isinstance(c.func, NovelViewStep)]
    return callback


@pytest.fixture(scope="module")
def distilled(scene, teacher_folder, vgg_weights, tmp_path_factory):
    """The reference run: 6 iterations through both phases, checkpoints at steps 2, 4 and 5.

    Also records, after every iteration, whether the trainer's lock (which the viewer takes before
    rendering) is held there, where step (B) runs."""
    config = distillation_config(scene, tmp_path_factory.mktemp("runs"), teacher_folder, vgg_weights, save_every=2)
    seed_everything()
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    lock_held = []
    record_lock = TrainingCallback(
        [TrainingCallbackLocation.AFTER_TRAIN_ITERATION], lambda step: lock_held.append(trainer.train_lock.locked())
    )
    trainer.callbacks.extend([reseed_at(BOOTSTRAP + 1), record_lock])
    trainer.train()
    return config, trainer, lock_held


def _event_tags(config: TrainerConfig) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(config.get_base_dir()), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    images = {tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]}
    return {"scalars": scalars, "images": images, "accumulator": events}


def test_both_phases_run_and_are_counted(distilled):
    config, trainer, lock_held = distilled
    model = trainer.pipeline.model
    counters = step_b(trainer).counters.totals()
    diffusion_steps = ITERATIONS - (BOOTSTRAP + 1)
    assert counters.vae_encodes == diffusion_steps and counters.vae_decodes == diffusion_steps
    assert counters.eft_queries == POOL_SIZE  # each pool camera once (the warm-up)
    # each diffusion step runs min(⌊2 · 8 · t⌋, 8) PLMS steps (at least one) + 1 UNet evaluations
    assert 2 * diffusion_steps <= counters.unet_evals <= 9 * diffusion_steps
    assert counters.teacher_seconds > 0
    assert set(step_b(trainer).last_losses) == {"novel_l1_loss", "novel_opacity_loss", "novel_perceptual_loss"}
    # step (B) ran inside the trainer's lock, which the web viewer takes before rendering
    assert lock_held == [True] * ITERATIONS
    # what the viewer does between steps still works: an eval-mode render of a pool camera
    model.eval()
    camera = step_b(trainer).render_cameras[0:1]
    outputs = model.get_outputs_for_camera(camera)
    assert outputs["rgb"].shape == (16, 16, 3) and outputs["normals"].shape == (16, 16, 3)
    model.train()

    logged = _event_tags(config)
    scalars = logged["scalars"]
    assert scalars["Distillation Loss Dict/novel_rgb_loss"] == [0, 1, 2]
    assert scalars["Distillation Loss Dict/novel_l1_loss"] == [3, 4, 5]
    assert scalars["Distillation Loss Dict/novel_perceptual_loss"] == [3, 4, 5]
    assert scalars["Distillation/unet_evals"] == list(range(ITERATIONS))
    unet_per_step = [e.value for e in logged["accumulator"].Scalars("Distillation/unet_evals")]
    assert unet_per_step[: BOOTSTRAP + 1] == [0] * (BOOTSTRAP + 1)
    assert sum(unet_per_step) == counters.unet_evals
    last_total = logged["accumulator"].Scalars("Distillation/unet_evals_total")[-1].value
    assert last_total == counters.unet_evals
    for name in ("vae_encodes", "vae_decodes", "eft_queries", "teacher_seconds"):
        assert f"Distillation/{name}_total" in scalars
    # every diffusion step draws a new start time: step (B)'s stream advances from step to step
    times = [e.value for e in logged["accumulator"].Scalars("Distillation/start_time")]
    assert len(times) == diffusion_steps and len(set(times)) == diffusion_steps
    assert all(0 <= t < 0.99 for t in times)
    # [render | target | EFT colour] of the same pool camera, every 2 steps, at the teacher's 64² size
    assert logged["images"]["Distillation/render_target_eft"] == [0, 2, 4]
    image = logged["accumulator"].Images("Distillation/render_target_eft")[0]
    assert (image.width, image.height) == (3 * 64, 64)


def test_teacher_stays_frozen_outside_the_checkpoint(distilled):
    config, trainer, _ = distilled
    teacher = trainer.pipeline.model.teacher
    assert teacher is not None and not teacher.training and not any(m.training for m in teacher.modules())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    module_names = [name for name, _ in trainer.pipeline.model.named_modules()]
    assert not any(name.startswith(("teacher", "_teacher")) for name in module_names)
    checkpoint = config.get_checkpoint_dir() / f"step-{ITERATIONS - 1:09d}.ckpt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # the torch ≥ 2.6 default
    keys = list(state["pipeline"])
    assert not any(part in key for key in keys for part in ("teacher", "eft.", "unet.", "vae.", "lpips", "heads."))
    assert "_model.distillation_state.rng_state" in keys and "_model.distillation_state.totals" in keys
    # the tiny teacher alone has ~12 M values, the whole checkpointed pipeline far fewer
    assert sum(v.numel() for v in state["pipeline"].values()) < sum(p.numel() for p in teacher.parameters())


def test_same_seed_gives_the_same_distillation(distilled, scene, teacher_folder, vgg_weights, tmp_path):
    reference_config, reference, _ = distilled
    config = distillation_config(scene, tmp_path, teacher_folder, vgg_weights, save_every=2)
    seed_everything()
    again = run(config, [reseed_at(BOOTSTRAP + 1)])
    expected = reference.pipeline.model.state_dict()
    for key, value in again.pipeline.model.state_dict().items():
        if key == "distillation_state.totals":
            value, expected[key] = value[:-1], expected[key][:-1]  # all but the seconds
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_resume_mid_distillation_reaches_the_same_state(distilled, scene, teacher_folder, vgg_weights, tmp_path):
    reference_config, reference, _ = distilled
    # resume from the checkpoint of the last bootstrap step: the resumed run switches phase itself
    # the same command as the reference run: --max-num-iterations counts the whole run
    config = distillation_config(
        scene, tmp_path, teacher_folder, vgg_weights, load_dir=reference_config.get_checkpoint_dir()
    )
    config.load_step = BOOTSTRAP
    seed_everything()  # as ns-train does at launch: nerfstudio's image cache order comes from `random`
    resumed = run(config, [reseed_at(BOOTSTRAP + 1)])
    assert resumed._start_step == BOOTSTRAP + 1
    expected = reference.pipeline.model.state_dict()
    for key, value in resumed.pipeline.model.state_dict().items():
        if key == "distillation_state.totals":
            # the resumed run recomputed the EFT cache once more; every other count is identical
            torch.testing.assert_close(value[:3], expected[key][:3], rtol=0, atol=0)
            assert float(value[3]) == float(expected[key][3]) + POOL_SIZE
            continue
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    for name, optimizer in resumed.optimizers.optimizers.items():
        for index, slots in reference.optimizers.optimizers[name].state_dict()["state"].items():
            for slot, tensor in slots.items():
                torch.testing.assert_close(optimizer.state_dict()["state"][index][slot], tensor, rtol=0, atol=0)


def _setup(config: TrainerConfig) -> Trainer:
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def test_bad_teacher_folder_stops_start_up(scene, teacher_folder, tmp_path):
    missing = tmp_path / "no_such_teacher"
    with pytest.raises(TeacherLoadError) as error:
        _setup(distillation_config(scene, tmp_path / "a", missing, None))
    message = str(error.value)
    assert "--pipeline.model.teacher" in message and str(missing) in message and "sf-convert-teacher" in message

    broken = tmp_path / "broken_teacher"
    broken.mkdir()
    for path in teacher_folder.iterdir():
        if path.name != "unet.safetensors":
            (broken / path.name).write_bytes(path.read_bytes())
    with pytest.raises(TeacherLoadError, match="unet.safetensors"):
        _setup(distillation_config(scene, tmp_path / "b", broken, None))


def test_missing_lpips_weights_stop_start_up_only_when_needed(scene, teacher_folder, tmp_path):
    absent = tmp_path / "absent_vgg16.pth"
    with pytest.raises(LPIPSWeightsNotFoundError) as error:
        _setup(distillation_config(scene, tmp_path / "a", teacher_folder, absent))
    message = str(error.value)
    assert "absent_vgg16.pth" in message
    assert "--pipeline.model.lpips-vgg-weights" in message and "use-perceptual-loss False" in message
    # a run that ends within the bootstrap never uses LPIPS: it starts without the file
    short = distillation_config(scene, tmp_path / "b", teacher_folder, absent, iterations=BOOTSTRAP + 1)
    assert step_b(_setup(short)).lpips is None


def test_missing_lpips_weights_can_be_skipped_with_a_notice(scene, teacher_folder, tmp_path, capsys):
    config = distillation_config(scene, tmp_path, teacher_folder, tmp_path / "absent_vgg16.pth")
    config.pipeline.model.distillation.perceptual_loss_if_weights_missing = "skip"  # as sparsefusion-mini
    assert step_b(_setup(config)).lpips is None
    output = capsys.readouterr().out
    assert "without the perceptual (LPIPS-VGG) loss" in output and "absent_vgg16.pth" in output


def test_runs_without_the_perceptual_term_and_with_the_authors_pool(scene, teacher_folder, tmp_path):
    config = distillation_config(scene, tmp_path, teacher_folder, tmp_path / "absent_vgg16.pth", iterations=4)
    config.pipeline.model.distillation.use_perceptual_loss = False
    config.pipeline.model.distillation.pool.source = "authors"
    trainer = run(config)
    assert set(step_b(trainer).last_losses) == {"novel_l1_loss", "novel_opacity_loss"}
    assert step_b(trainer).counters.totals().vae_encodes == 4 - (BOOTSTRAP + 1)
    # the authors' pool: all 12 scene frames (the held-out ones included) plus the circle
    assert step_b(trainer).pool.kinds == ("frame",) * 12 + ("circle",) * 4


def test_command_line_names():
    config = sparsefusion_config()
    parsed = tyro.cli(
        tyro.conf.FlagConversionOff[type(config)],
        default=config,
        args=[
            "--pipeline.model.teacher", "/teachers/hydrant",
            "--pipeline.model.distillation.pool.source", "authors",
            "--pipeline.model.distillation.bootstrap-iterations", "500",
            "--pipeline.model.distillation.use-perceptual-loss", "False",
            "--pipeline.model.lpips-vgg-weights", "/weights/vgg16-397923af.pth",
        ],
    )  # fmt: skip
    model = parsed.pipeline.model
    assert model.teacher == Path("/teachers/hydrant") and model.lpips_vgg_weights.name == "vgg16-397923af.pth"
    assert model.distillation.pool.source == "authors" and model.distillation.bootstrap_iterations == 500
    assert model.distillation.use_perceptual_loss is False
    # the paper's defaults
    defaults = sparsefusion_config()
    assert defaults.max_num_iterations == 3000 and defaults.pipeline.model.teacher is None
    distillation = defaults.pipeline.model.distillation
    assert (distillation.render_resolution, distillation.bootstrap_iterations) == (128, 1000)
    assert (distillation.plms_max_steps, distillation.max_start_time, distillation.perceptual_weight) == (50, 0.99, 0.1)
    pool = distillation.pool
    assert (pool.source, pool.num_circle_cameras, pool.elevation_jitter) == ("inputs", 50, 0.17)
