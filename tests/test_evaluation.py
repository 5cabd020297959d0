"""The evaluation's pieces: held-out views and their scores, the EFT and VLDM baselines, pictures.

A CO3D-format fixture sequence (8 frames of 96×128, 2 input views, 6 held out) read by the ``co3d``
dataparser at 64², and a random ``Teacher.tiny`` (64² images, 8² latents): every test takes seconds.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sparsefusion_ns.data.co3d_dataparser import Co3dDataParserConfig
from sparsefusion_ns.distillation.teacher_inputs import from_square_image, inputs_for_teacher, ndc_cameras, square_image
from sparsefusion_ns.evaluation.comparison_figure import LABEL_HEIGHT, image_row, stack_rows
from sparsefusion_ns.evaluation.eft_baseline import EFTBaseline
from sparsefusion_ns.evaluation.held_out import evaluate_views, held_out_views
from sparsefusion_ns.evaluation.vldm_baseline import AUTHORS_SAMPLING_STEPS, VLDMBaseline
from sparsefusion_ns.metrics import view_metrics
from sparsefusion_ns.plugin.method_configs import sparsefusion_mini_config
from sparsefusion_ns.teacher.bundle import Teacher
from sparsefusion_ns.teacher.eft import EFTConfig, EpipolarFeatureTransformer
from tests.co3d_fixture import Co3dFixtureConfig, write_co3d_fixture
from tests.test_teacher_bundle import cameras_around_origin
from tests.torch_threads import torch_threads

FRAMES = 8
INPUT_VIEWS = 2


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return Teacher.tiny(seed=0)


@pytest.fixture(scope="module")
def datamanager(tmp_path_factory):
    fixture = write_co3d_fixture(tmp_path_factory.mktemp("co3d"), Co3dFixtureConfig(frames_per_sequence=FRAMES))
    config = sparsefusion_mini_config().pipeline.datamanager
    config.data = fixture.root
    config.dataparser = Co3dDataParserConfig(
        data=fixture.root,
        category=fixture.category,
        subset="fewview_test",
        num_frames=FRAMES,
        num_input_views=INPUT_VIEWS,
        image_size=64,
        cache_dir=tmp_path_factory.mktemp("cache"),
    )
    return config.setup(device="cpu", test_mode="test")


@pytest.fixture(scope="module")
def views(datamanager):
    return held_out_views(datamanager.eval_dataset)


def test_held_out_views_are_the_masked_frames_not_given_as_inputs(datamanager, views):
    dataset = datamanager.eval_dataset
    assert len(views) == FRAMES - INPUT_VIEWS
    assert [view.frame_index for view in views] == list(dataset.metadata["frame_indices"])
    assert not set(dataset.metadata["frame_indices"]) & set(datamanager.train_dataset.metadata["frame_indices"])
    view = views[0]
    assert view.image.shape == (3, 64, 64) and view.fg_mask.shape == view.valid.shape == (1, 64, 64)
    assert float(view.valid.min()) == 0.0  # a non-square photo: its crop is padded
    assert torch.equal(view.image, dataset[0]["image"].permute(2, 0, 1))


def test_evaluate_views_scores_every_view_as_view_metrics_does(views):
    def half(view):
        return view.image * 0.5 + 0.25

    result = evaluate_views(half, views)
    assert len(result.per_view) == len(result.renders) == len(views)
    for view, scores in zip(views, result.per_view):
        expected = view_metrics(half(view), view.image, mask=view.fg_mask, valid=view.valid)
        assert scores == {"frame_index": view.frame_index, "image": view.image_name, **expected}
    assert result.mean["psnr"] == pytest.approx(sum(v["psnr"] for v in result.per_view) / len(views))
    with pytest.raises(ValueError, match="rendered frame"):
        evaluate_views(lambda view: view.image[:, :32], views)


def test_eft_pixel_grid_queries_the_pixel_centres():
    # with a grid as dense as the image, the default grid *is* the pixel centres: both agree exactly
    torch.manual_seed(0)
    config = replace(EFTConfig.tiny(), grid_size=32, rays_per_chunk=256)
    eft = EpipolarFeatureTransformer(config).eval()
    cameras = cameras_around_origin([0.0, 40.0, -35.0], distance=6.0)
    images = torch.rand(2, 3, 32, 32)
    default = eft.query(images, cameras[1:], cameras[:1], depth_center=6.0)
    dense = eft.query(images, cameras[1:], cameras[:1], depth_center=6.0, pixel_grid=32)
    assert torch.equal(default[0], dense[0]) and torch.equal(default[1], dense[1])
    sparse = eft.query(images, cameras[1:], cameras[:1], depth_center=6.0, pixel_grid=7)
    assert sparse[0].shape == (3, 7, 7) and sparse[1].shape == (config.d_model, 7, 7)


def test_eft_baseline_renders_full_resolution_from_the_distillations_inputs(teacher, datamanager, views):
    baseline = EFTBaseline.for_scene(teacher, datamanager)
    inputs = inputs_for_teacher(datamanager, teacher)
    assert torch.equal(baseline.images, inputs.images) and baseline.depth_center == inputs.depth_center
    image = baseline(views[0])
    assert image.shape == views[0].image.shape  # 64², not the EFT's 8² grid
    assert baseline.cost.eft_queries == 1 and baseline.cost.teacher_seconds > 0
    # rays are independent: the dense image holds the colours of a direct query at those pixels
    camera = ndc_cameras(views[0].camera)
    direct, _ = teacher.eft.query(inputs.images, inputs.cameras, camera, inputs.depth_center, pixel_grid=64)
    assert torch.equal(image, direct)


def test_vldm_baseline_samples_from_noise_with_plms_and_counts_its_cost(teacher, datamanager, views):
    assert AUTHORS_SAMPLING_STEPS == 50
    baseline = VLDMBaseline.for_scene(teacher, datamanager, steps=3, seed=5)
    first = baseline(views[0])
    assert first.shape == views[0].image.shape and 0.0 <= float(first.min()) <= float(first.max()) <= 1.0
    cost = baseline.cost
    assert (cost.unet_evals, cost.vae_decodes, cost.eft_queries, cost.vae_encodes) == (4, 1, 1, 0)  # steps + 1
    # seeded per frame: the same view gives the same sample, another view another one
    assert torch.equal(first, baseline(views[0]))
    again = VLDMBaseline.for_scene(teacher, datamanager, steps=3, seed=5)
    assert torch.equal(again(views[1]), baseline(views[1]))
    assert not torch.equal(baseline(views[1]), VLDMBaseline.for_scene(teacher, datamanager, 3, seed=6)(views[1]))
    with pytest.raises(ValueError, match="at least one PLMS step"):
        VLDMBaseline.for_scene(teacher, datamanager, steps=0)


def test_from_square_image_undoes_square_image():
    image = torch.rand(48, 64, 3)
    square = square_image(image, 64)
    assert torch.equal(from_square_image(square, 48, 64), image.permute(2, 0, 1))
    assert from_square_image(torch.rand(3, 16, 16), 48, 64).shape == (3, 48, 64)


def test_picture_rows_and_labels():
    row = image_row([torch.rand(3, 64, 64), torch.zeros(3, 32, 64)], 48)
    assert row.size == (96, 48)
    sheet = stack_rows([row, row], ["a", "b"], 48, ["scene\nframe 3", "scene\nframe 5"], row_label_width=30)
    assert sheet.size == (30 + 96, LABEL_HEIGHT + 2 * 48)
    with pytest.raises(ValueError, match="row labels"):
        stack_rows([row], row_labels=["a", "b"])


def test_mini_method_keeps_the_papers_ratios():
    config = sparsefusion_mini_config()
    datamanager, model = config.pipeline.datamanager, config.pipeline.model
    distillation = model.distillation
    assert datamanager.dataparser.image_size == 64 and datamanager.camera_res_scale_factor == 1.0
    assert distillation.render_resolution * 2 == datamanager.dataparser.image_size  # 128² → 256² in the paper
    assert datamanager.train_num_rays_per_batch == distillation.render_resolution**2  # step A rays = step B rays
    assert 0.25 < (distillation.bootstrap_iterations + 1) / config.max_num_iterations < 0.4
    assert distillation.plms_max_steps < 50 and distillation.perceptual_loss_if_weights_missing == "skip"
    assert distillation.use_perceptual_loss


@pytest.mark.parametrize("name", ["sparsefusion-mini"])
def test_mini_method_is_registered(name):
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'{name} = "sparsefusion_ns.plugin.method_configs:sparsefusion_mini_method"' in text
