"""``sf-train-teacher``: data, losses, the training loop, checkpoints, exact resume and the teacher folder.

Everything runs on the CPU with the tiny teacher (64² images, 8² latents) on a synthetic CO3D folder
(``co3d_fixture``) and on demo nerfstudio scenes, in one torch thread: on this shared 2-core machine
two threads are up to 10x slower, and bit-exact comparisons need a fixed thread count anyway.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import tyro

from sparsefusion_ns.cameras.conventions import opengl_pose_to_pytorch3d
from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras
from sparsefusion_ns.data.co3d_annotations import AUTHORS_EXCLUDED_SEQUENCES
from sparsefusion_ns.data.sparse_view_dataparser import read_transforms
from sparsefusion_ns.teacher.bundle import Teacher, TeacherConfig
from sparsefusion_ns.teacher_training.checkpoints import list_checkpoints, read_trainer_state
from sparsefusion_ns.teacher_training.cli import main as cli_main
from sparsefusion_ns.teacher_training.config import (
    DataConfig,
    LossConfig,
    TeacherTrainingConfig,
    ViewSamplingConfig,
)
from sparsefusion_ns.teacher_training.datasets import QueryContextDataset, SampleKey, SceneStream, TrainingExample
from sparsefusion_ns.teacher_training.latent_cache import LatentCache, cache_fingerprint
from sparsefusion_ns.teacher_training.losses import draw_diffusion_inputs, pseudo_huber
from sparsefusion_ns.teacher_training.lr_schedule import StepDecaySchedule
from sparsefusion_ns.teacher_training.model import TeacherTrainingModel
from sparsefusion_ns.teacher_training.scenes import Co3dScenes, NerfstudioScenes, TrainingDataError
from sparsefusion_ns.teacher_training.trainer import train
from tests.co3d_fixture import Co3dFixtureConfig, write_co3d_fixture
from tests.scenes import demo_scene
from tests.torch_threads import torch_threads

IMAGE_SIZE = TeacherConfig.tiny().eft.image_size  # 64
BROKEN = AUTHORS_EXCLUDED_SEQUENCES[0]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Before the module's other fixtures (autouse fixtures come first within a scope)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def co3d(tmp_path_factory):
    """Three training sequences of 12 frames; the first is renamed to a sequence the authors exclude."""
    fixture = write_co3d_fixture(
        tmp_path_factory.mktemp("co3d"),
        Co3dFixtureConfig(
            num_train_sequences=3, num_dev_sequences=0, num_test_sequences=0,
            frames_per_sequence=12, image_size_hw=(48, 64),
        ),
    )  # fmt: skip
    renamed = fixture.sequences["train"][0]
    folder = fixture.root / fixture.category
    for name in ("frame_annotations.jgz", "sequence_annotations.jgz"):
        with gzip.open(folder / name, "rt") as file:
            records = json.load(file)
        for record in records:
            if record["sequence_name"] == renamed:
                record["sequence_name"] = BROKEN
        with gzip.open(folder / name, "wt") as file:
            json.dump(records, file)
    set_list = folder / "set_lists" / "set_lists_fewview_train.json"
    content = json.loads(set_list.read_text())
    content["train"] = [[BROKEN if s == renamed else s, n, p] for s, n, p in content["train"]]
    set_list.write_text(json.dumps(content))
    fixture.frames[BROKEN] = fixture.frames.pop(renamed)
    return fixture


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """A tiny random teacher folder: the VAE source of every run (and an init teacher)."""
    return Teacher.tiny(seed=0).save_pretrained(tmp_path_factory.mktemp("teachers") / "tiny")


def run_config(co3d, tiny_teacher, output: Path, **overrides) -> TeacherTrainingConfig:
    settings = dict(
        output=output,
        data=DataConfig(root=co3d.root, categories=(co3d.category,)),
        vae=tiny_teacher,
        architecture="tiny",
        max_steps=6,
        num_workers=0,
        log_every=2,
        sample_every=3,
        sample_steps=2,
        checkpoint_every=3,
        keep_checkpoints=0,
        progress=False,
    )
    settings.update(overrides)
    return TeacherTrainingConfig(**settings)


@pytest.fixture(scope="module")
def trained(co3d, tiny_teacher, tmp_path_factory):
    """6 joint steps with a data-loading worker, checkpoints at steps 3 and 6."""
    config = run_config(co3d, tiny_teacher, tmp_path_factory.mktemp("runs") / "a", num_workers=1)
    return config, train(config)


# ---------------------------------------------------------------------------------------- data
def world_origin_pixel_values(example: TrainingExample, origin_in_query_frame: torch.Tensor) -> torch.Tensor:
    """Summed RGB at the projection of the world origin into the query view and every context view."""
    images = torch.cat([example.query_image[None], example.context_images])
    cameras = NDCCameras.cat([example.query_camera, example.context_cameras])
    xy = cameras.transform_points_ndc(origin_in_query_frame[None].float())[:, 0, :2]
    half = IMAGE_SIZE / 2
    u, v = (half - xy[:, 0] * half).long(), (half - xy[:, 1] * half).long()  # NDC +x left, +y up
    assert ((u >= 0) & (u < IMAGE_SIZE) & (v >= 0) & (v < IMAGE_SIZE)).all(), (u, v)
    return images[torch.arange(len(images)), :, v, u].sum(dim=-1)


def test_co3d_examples_follow_the_recipe_and_their_cameras_agree_with_the_images(co3d):
    scenes = Co3dScenes(DataConfig(root=co3d.root, categories=(co3d.category,)), IMAGE_SIZE)
    dataset = QueryContextDataset(scenes, ViewSamplingConfig(), seed=0)
    counts = set()
    for position in range(12):
        key = SampleKey(scene=position % len(scenes), position=position)
        example = dataset[key]
        query, context, pool = dataset.choose_views(key)
        counts.add(len(context))
        assert 2 <= len(context) <= 5 and len(pool) == 10 and query in pool and set(context) <= set(pool)
        assert example.query_image.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
        assert example.context_images.shape == (len(context), 3, IMAGE_SIZE, IMAGE_SIZE)
        # the query camera defines the frame: R = I, T = 0
        torch.testing.assert_close(example.query_camera.R[0], torch.eye(3), atol=1e-6, rtol=0)
        torch.testing.assert_close(example.query_camera.T[0], torch.zeros(3), atol=1e-6, rtol=0)
        # d̄ is the mean distance of the pool's camera centres from the world origin
        sequence = example.scene.split("/", 1)[1]
        viewpoints = [co3d.frames[sequence][i].viewpoint for i in pool]
        expected = np.mean([np.linalg.norm(v.R @ v.T) for v in viewpoints])
        assert example.depth_center == pytest.approx(expected, rel=1e-12)
        # The object (a sphere of radius 1 at the world origin) is where every camera says it is,
        # after the crop/resize/pad and the change to the query frame; the background is masked.
        query_viewpoint = co3d.frames[sequence][int(example.query_frame)].viewpoint
        values = world_origin_pixel_values(example, torch.from_numpy(query_viewpoint.T))
        assert (values > 0.3).all(), values
        background = (example.query_valid[0] > 0) & (example.query_image.sum(0) == 0)
        assert background.any()
    assert counts >= {2, 3, 4}  # the draws are spread over the range
    again = dataset[SampleKey(0, 5)]
    first = dataset[SampleKey(0, 5)]
    assert again.query_frame == first.query_frame and torch.equal(again.context_images, first.context_images)


def test_the_authors_broken_sequences_are_left_out(co3d):
    scenes = Co3dScenes(DataConfig(root=co3d.root, categories=(co3d.category,)), IMAGE_SIZE)
    assert len(scenes) == 2
    assert not any(key.endswith(name) for key in scenes.scene_keys for name in AUTHORS_EXCLUDED_SEQUENCES)


def test_nerfstudio_scene_folders(tmp_path):
    for name in ("scene_a", "scene_b"):
        demo_scene(tmp_path / "scenes" / name, num_views=8, resolution=32)
    scenes = NerfstudioScenes(DataConfig(kind="nerfstudio", root=tmp_path / "scenes"), IMAGE_SIZE)
    assert scenes.scene_keys == ["scene_a", "scene_b"]
    dataset = QueryContextDataset(scenes, ViewSamplingConfig(frames_per_scene=6), seed=3)
    frames = read_transforms(tmp_path / "scenes" / "scene_b" / "transforms.json")
    for position in range(4):
        example = dataset[SampleKey(scene=1, position=position)]
        assert example.scene == "scene_b" and example.context_images.shape[-1] == IMAGE_SIZE
        pose = torch.from_numpy(frames[int(example.query_frame)].camera_to_world)[None]
        _, T_query = opengl_pose_to_pytorch3d(pose)
        # the demo object (a sphere around the world origin on a box) covers the origin in every view
        assert (world_origin_pixel_values(example, T_query[0]) > 0.1).all()
    # a single scene folder is a collection of one scene
    assert len(NerfstudioScenes(DataConfig(kind="nerfstudio", root=tmp_path / "scenes" / "scene_a"), IMAGE_SIZE)) == 1


def test_bad_dataset_roots_give_clear_errors(co3d, tmp_path):
    with pytest.raises(TrainingDataError, match="does not exist"):
        Co3dScenes(DataConfig(root=tmp_path / "missing"), IMAGE_SIZE)
    with pytest.raises(TrainingDataError, match="Categories found there: synthetic"):
        Co3dScenes(DataConfig(root=co3d.root, categories=("hydrant",)), IMAGE_SIZE)
    with pytest.raises(TrainingDataError, match="does not exist"):
        NerfstudioScenes(DataConfig(kind="nerfstudio", root=tmp_path / "missing"), IMAGE_SIZE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingDataError, match="no transforms.json"):
        NerfstudioScenes(DataConfig(kind="nerfstudio", root=tmp_path / "empty"), IMAGE_SIZE)


def test_scene_stream_splits_positions_between_processes_and_visits_every_scene():
    def take(stream, n):
        iterator = iter(stream)
        return [next(iterator) for _ in range(n)]

    rank0 = take(SceneStream(5, seed=1, num_replicas=2, rank=0), 5)
    rank1 = take(SceneStream(5, seed=1, num_replicas=2, rank=1), 5)
    assert sorted(k.position for k in rank0 + rank1) == list(range(10))
    single = take(SceneStream(5, seed=1), 10)
    assert sorted(k.scene for k in single[:5]) == list(range(5))  # an epoch visits each scene once
    merged = sorted(rank0 + rank1, key=lambda k: k.position)
    assert merged == single  # the stream does not depend on the number of processes
    assert take(SceneStream(5, seed=1, start=7), 3) == single[7:10]  # resuming continues the stream


# -------------------------------------------------------------------------------------- losses
def test_pseudo_huber_is_quadratic_near_zero_and_linear_far_away():
    delta = 0.1
    zero = torch.tensor(0.0, dtype=torch.float64)
    for small in (1e-3, -2e-3):
        assert float(pseudo_huber(zero + small, zero, delta)) == pytest.approx(small**2 / (2 * delta), rel=1e-3)
    for large in (10.0, -20.0):
        assert float(pseudo_huber(zero + large, zero, delta)) == pytest.approx(abs(large) - delta, rel=1e-3)


def test_diffusion_draws_are_reproducible_and_within_range():
    draws = draw_diffusion_inputs(1000, (4, 8, 8), 0.999, 0.1, torch.Generator().manual_seed(0))
    again = draw_diffusion_inputs(1000, (4, 8, 8), 0.999, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(draws.noise, again.noise) and torch.equal(draws.t, again.t)
    assert 0 <= draws.t.min() and draws.t.max() < 0.999
    assert 0.07 < draws.cond_drop.float().mean() < 0.13  # 10 %: binomial std of the mean ≈ 0.01


def test_loss_falls_when_overfitting_one_example(co3d, tiny_teacher):
    scenes = Co3dScenes(DataConfig(root=co3d.root, categories=(co3d.category,)), IMAGE_SIZE)
    example = QueryContextDataset(scenes, ViewSamplingConfig(), seed=0)[SampleKey(0, 0)]
    teacher = Teacher.from_pretrained(tiny_teacher)
    latent = teacher.vae.encode(example.query_image[None])[0]
    draws = draw_diffusion_inputs(12, tuple(latent.shape), 0.999, 0.1, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = TeacherTrainingModel(TeacherConfig.tiny(), "joint", LossConfig())
    # lr 3e-3 rather than the recipe's 5e-5, so that 50 steps are enough to fit one example
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)

    def evaluate() -> dict:
        model.eval()
        with torch.no_grad():
            losses = {k: float(v) for k, v in model(example, latent, draws).items()}
        model.train()
        return losses

    before = evaluate()
    for _ in range(50):
        optimizer.zero_grad()
        model(example, latent, draws)["loss"].backward()
        optimizer.step()
    after = evaluate()
    # Measured on this machine: loss 0.965 -> 0.196 (diffusion 0.630 -> 0.090, EFT colour
    # 0.334 -> 0.105). Require each term to at least halve, a wide margin under that.
    for name in ("loss", "diffusion", "eft_colour"):
        assert after[name] < 0.5 * before[name], (name, before, after)


def test_bf16_autocast_runs_the_unet_in_bf16_and_the_eft_in_float32(co3d):
    scenes = Co3dScenes(DataConfig(root=co3d.root, categories=(co3d.category,)), IMAGE_SIZE)
    example = QueryContextDataset(scenes, ViewSamplingConfig(), seed=0)[SampleKey(1, 2)]
    model = TeacherTrainingModel(TeacherConfig.tiny())
    draws = draw_diffusion_inputs(12, (4, 8, 8), 0.999, 0.1, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grid = model.eft_grid(example.context_images, example.context_cameras, example.query_camera, 5.0)
        eps = model.unet(draws.noise, model.schedule.log_snr(draws.t), grid.features[None].expand(12, -1, -1, -1))
        losses = model(example, torch.zeros(4, 8, 8), draws)
    assert grid.features.dtype == torch.float32 and eps.dtype == torch.bfloat16
    assert all(torch.isfinite(value) for value in losses.values())


def test_step_decay_schedule_halves_every_step_size_and_saves_plain_json():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=5e-5)
    schedule = StepDecaySchedule(optimizer, step_size=3, gamma=0.5)
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        schedule.step()
    assert rates == [5e-5] * 3 + [2.5e-5] * 3 + [1.25e-5]
    state = json.loads(json.dumps(schedule.state_dict()))
    restored = StepDecaySchedule(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 1, 1.0)
    restored.load_state_dict(state)
    assert restored.learning_rates() == schedule.learning_rates() == [1.25e-5]


# ------------------------------------------------------------------------------------ training
def test_training_writes_checkpoints_samples_logs_and_a_teacher_the_method_loads(trained):
    config, run = trained
    assert [r["step"] for r in run.history] == list(range(1, 7))
    assert all(math.isfinite(r[k]) for r in run.history for k in ("loss", "diffusion", "eft_colour"))
    assert [step for step, _ in list_checkpoints(config.output)] == [3, 6]
    state = read_trainer_state(run.checkpoints[-1])
    assert state["step"] == 6 and state["examples_seen"] == 6 and state["lr_schedule"]["steps"] == 6
    assert sorted(p.name for p in (config.output / "samples").iterdir()) == ["step-00000003.png", "step-00000006.png"]
    assert any((config.output / "tensorboard").iterdir())

    teacher = Teacher.from_pretrained(run.teacher)  # what the sparsefusion method loads
    assert teacher.config == TeacherConfig.tiny()
    weights = safetensors.torch.load_file(run.checkpoints[-1] / "model.safetensors")
    for name in ("eft", "unet"):
        for key, value in getattr(teacher, name).state_dict().items():
            assert torch.equal(value, weights[f"{name}.{key}"]), key
    initial = Teacher.tiny(seed=0)
    assert not torch.equal(teacher.unet.final_conv.weight, initial.unet.final_conv.weight)  # it trained
    for key, value in initial.vae.autoencoder.state_dict().items():
        assert torch.equal(teacher.vae.autoencoder.state_dict()[key], value)  # the VAE stays frozen


def test_resume_reproduces_the_uninterrupted_run_exactly(trained, tmp_path):
    config, run = trained
    resumed = train(replace(config, output=tmp_path / "b", num_workers=0, resume_from=run.checkpoints[0]))
    assert [r["step"] for r in resumed.history] == [4, 5, 6]
    keys = ("lr", "loss", "diffusion", "eft_colour")
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in run.history[3:]]
    uninterrupted = safetensors.torch.load_file(run.checkpoints[-1] / "model.safetensors")
    continued = safetensors.torch.load_file(resumed.checkpoints[-1] / "model.safetensors")
    assert all(torch.equal(uninterrupted[key], continued[key]) for key in uninterrupted)
    state_a = torch.load(run.checkpoints[-1] / "optimizer.pt", weights_only=True)["state"]
    state_b = torch.load(resumed.checkpoints[-1] / "optimizer.pt", weights_only=True)["state"]
    assert all(torch.equal(state_a[i]["exp_avg_sq"], state_b[i]["exp_avg_sq"]) for i in state_a)


def test_runs_refuse_to_overwrite_and_resume_at_the_end_only_exports(trained, tmp_path):
    config, run = trained
    with pytest.raises(FileExistsError, match="--resume"):
        train(config)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(replace(config, output=tmp_path / "empty", resume=True))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("someone else's file")
    with pytest.raises(FileExistsError, match="not empty"):  # a new run never mixes into a used folder
        train(replace(config, output=tmp_path / "busy"))
    exported = train(replace(config, output=tmp_path / "export", resume_from=run.checkpoints[-1]))
    assert exported.step == 6 and exported.history == []
    assert torch.equal(
        Teacher.from_pretrained(exported.teacher).unet.final_conv.weight,
        Teacher.from_pretrained(run.teacher).unet.final_conv.weight,
    )


def test_vldm_stage_on_a_frozen_eft_with_a_latent_cache(co3d, tiny_teacher, tmp_path):
    config = run_config(
        co3d, tiny_teacher, tmp_path / "run", stage="vldm", init_teacher=tiny_teacher, vae=None, architecture=None,
        max_steps=2, sample_every=0, checkpoint_every=2, latent_cache=tmp_path / "latents",
    )  # fmt: skip
    run = train(config)
    initial, trained_teacher = Teacher.tiny(seed=0), Teacher.from_pretrained(run.teacher)
    for key, value in initial.eft.state_dict().items():
        assert torch.equal(trained_teacher.eft.state_dict()[key], value), key  # frozen, BatchNorm included
    assert not torch.equal(trained_teacher.unet.final_conv.weight, initial.unet.final_conv.weight)

    # the cache holds every frame's latent, equal to encoding the frame on the fly
    scenes = Co3dScenes(config.data, IMAGE_SIZE)
    cache = LatentCache(config.latent_cache, cache_fingerprint(initial.vae, config.data, IMAGE_SIZE))
    assert cache.check_info()
    assert all(cache.has_scene(key, scenes.frame_ids(i)) for i, key in enumerate(scenes.scene_keys))
    frame = scenes.load(1, 4)
    on_the_fly = initial.vae.encode(frame.image[None])[0]
    # batched vs single-image convolutions round differently; float32 rounding is ~1e-7 here
    torch.testing.assert_close(cache.read(scenes.scene_keys[1], scenes.frame_ids(1)[4]), on_the_fly, atol=1e-5, rtol=0)

    other = replace(config.data, box_context=0.5)  # other preprocessing: the cache must be refused
    with pytest.raises(ValueError, match="box_context"):
        LatentCache(config.latent_cache, cache_fingerprint(initial.vae, other, IMAGE_SIZE)).check_info()


def test_eft_stage_on_nerfstudio_scenes(tiny_teacher, tmp_path):
    demo_scene(tmp_path / "scenes" / "demo", num_views=8, resolution=32)
    config = TeacherTrainingConfig(
        output=tmp_path / "run", data=DataConfig(kind="nerfstudio", root=tmp_path / "scenes"), vae=tiny_teacher,
        architecture="tiny", stage="eft", max_steps=2, num_workers=0, sample_every=2, checkpoint_every=2,
        progress=False,
    )  # fmt: skip
    run = train(config)
    assert list(run.history[0]) == ["step", "lr", "eft_colour", "loss", "seconds"]
    teacher, initial = Teacher.from_pretrained(run.teacher), Teacher.tiny(seed=0)
    assert not torch.equal(teacher.eft.t3_attn.weight, initial.eft.t3_attn.weight)


def test_cli_parses_the_documented_options_and_reports_errors_without_traceback(tiny_teacher, tmp_path, capsys):
    config = tyro.cli(
        TeacherTrainingConfig,
        args=[
            "--data.root", "/data/co3d", "--data.categories", "hydrant", "teddybear", "--vae", "sd.ckpt",
            "--output", "runs/x", "--mixed-precision", "bf16", "--views.context-views", "2", "4", "--resume",
        ],
    )  # fmt: skip
    assert config.data.categories == ("hydrant", "teddybear") and config.views.context_views == (2, 4)
    assert config.mixed_precision == "bf16" and config.resume and config.vae == Path("sd.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            TeacherTrainingConfig(
                output=tmp_path / "run", data=DataConfig(root=tmp_path / "nowhere"),
                vae=tiny_teacher, architecture="tiny",
            )
        )  # fmt: skip
    assert exit_info.value.code == 1
    message = capsys.readouterr().out
    assert "CO3Dv2 root" in message and "does not exist" in message and "Traceback" not in message
