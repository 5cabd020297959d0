"""The EFT port against the authors' module: checkpoint layout and golden vectors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from sparsefusion_ns.cameras.look_at import look_at_pytorch3d
from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras
from sparsefusion_ns.teacher.bundle import TeacherConfig, expected_state_dict_shapes
from sparsefusion_ns.teacher.eft import (
    EFTConfig,
    EpipolarFeatureTransformer,
    load_authors_state_dict,
)
from sparsefusion_ns.teacher.harmonic_embedding import HarmonicEmbedding, plucker

# recommended_atol from golden_eft_transformer.json / golden_eft_full.json
ATOL_FEATURES = 1e-4
ATOL_RGB = 1e-5
ATOL_WEIGHTS = 1e-5
ATOL_XYZ_NDC = 1e-5


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def _weights(golden: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights.*`` entries with the prefix stripped, float16 -> float32 (lossless)."""
    return {
        key.removeprefix("weights."): value.float() if value.is_floating_point() else value
        for key, value in golden.items()
        if key.startswith("weights.")
    }


@pytest.fixture(scope="module")
def goldens(shared_dir):
    reference = shared_dir / "reference"
    return (
        load_file(reference / "golden_eft_transformer.safetensors"),
        load_file(reference / "golden_eft_full.safetensors"),
    )


@pytest.fixture(scope="module")
def golden_model(goldens):
    """The full-size EFT with the golden weights (the goldens omit the unused layer4/fc)."""
    transformer, full = goldens
    model = EpipolarFeatureTransformer(EFTConfig.full())
    state = model.state_dict()
    golden_state = {**_weights(transformer), **_weights(full)}
    unused = {k for k in state if k.startswith(("encoder_model.layer4.", "encoder_model.fc."))}
    assert set(state) - set(golden_state) == unused
    state.update(golden_state)
    load_authors_state_dict(model, state)
    return model.eval()


def _cameras(full: dict[str, torch.Tensor]) -> NDCCameras:
    return NDCCameras(
        R=full["in.R"],
        T=full["in.T"],
        focal_length=full["in.focal_length"],
        principal_point=full["in.principal_point"],
    )


def _rays(full: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The golden's 2x4 query rays, flattened row-major."""
    return (
        full["in.ray_origins"].reshape(-1, 3),
        full["in.ray_directions"].reshape(-1, 3),
        full["in.ray_lengths"].reshape(8, -1),
    )


def test_state_dict_matches_released_checkpoint(shared_dir):
    keys_full = json.loads((shared_dir / "reference" / "keys_full.json").read_text())
    entries = keys_full["eft"]["state_dict"]
    with torch.device("meta"):
        model = EpipolarFeatureTransformer(EFTConfig.full())
    ours = [
        (key, list(value.shape), str(value.dtype).removeprefix("torch.")) for key, value in model.state_dict().items()
    ]
    assert ours == [(e["key"], e["shape"], e["dtype"]) for e in entries]
    assert len(ours) == 278
    n_parameters = sum(p.numel() for p in model.parameters())
    assert n_parameters == keys_full["eft"]["param_count_total"] == 16_810_285
    assert expected_state_dict_shapes(TeacherConfig.full())["eft"] == {e["key"]: tuple(e["shape"]) for e in entries}


def test_harmonic_embedding_layout_is_input_dimension_major():
    embed = HarmonicEmbedding(n_harmonic_functions=3)
    a, b = 0.3, -1.1
    frequencies = (1, 2, 4)
    expected = (
        [math.sin(a * f) for f in frequencies]
        + [math.sin(b * f) for f in frequencies]
        + [math.cos(a * f) for f in frequencies]
        + [math.cos(b * f) for f in frequencies]
        + [a, b]
    )
    torch.testing.assert_close(embed(torch.tensor([[a, b]])), torch.tensor([expected]))
    assert embed.output_dim(6) == 42 and "frequencies" not in embed.state_dict()


def test_plucker_is_unit_direction_and_moment():
    origins, directions = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.0, 0.0, 2.0]])
    expected = torch.tensor([[0.0, 0.0, 1.0, 2.0, -1.0, 0.0]])  # d = z, o x d = (2, -1, 0)
    torch.testing.assert_close(plucker(origins, directions), expected)


def test_golden_transformer_stack(golden_model, goldens):
    transformer, _ = goldens
    with torch.no_grad():
        out = golden_model.forward_points(
            transformer["in.query_plucker"][0, :, 0],
            transformer["in.reference_plucker"],
            transformer["in.depth_embedding"][0],
            transformer["in.features"],
        )
    assert_close(out.features, transformer["out.features"], ATOL_FEATURES)
    assert_close(out.rgb, transformer["out.rgb"], ATOL_RGB)
    assert_close(out.depth_weights, transformer["out.t2_w"][..., 0], ATOL_WEIGHTS)
    assert_close(out.view_weights, transformer["out.t3_w"][..., 0], ATOL_WEIGHTS)
    assert_close(out.coarse_rgb, transformer["out.coarse_rgb"], ATOL_RGB)


def test_golden_full_forward(golden_model, goldens):
    transformer, full = goldens
    cameras, images = _cameras(full), full["in.images"]
    origins, directions, lengths = _rays(full)
    with torch.no_grad():
        latent = golden_model.encode(images)
        query, reference, depth, features = golden_model.ray_inputs(
            latent, images, cameras, origins, directions, lengths
        )
        # 4 rays per chunk = upstream's n_batches=2 in this golden
        out = golden_model(images, cameras, origins, directions, lengths, rays_per_chunk=4)

    points = origins[:, None] + lengths[..., None] * directions[:, None]  # (rays, samples, 3)
    assert_close(cameras.transform_points_ndc(points.reshape(-1, 3)), full["out.xyz_ndc"], ATOL_XYZ_NDC)
    assert_close(cameras.camera_centers(), full["out.camera_centers"], ATOL_XYZ_NDC)
    assert_close(latent[:, :, ::8, ::8], full["out.encoder_latent_sub"], ATOL_FEATURES)
    # the per-point inputs are golden_eft_transformer's inputs (same rays, same order); atol
    # 1e-5: float32 round-off of the Plücker embedding (frequencies up to 32)
    assert_close(query, transformer["in.query_plucker"][0, :, 0], 1e-5)
    assert_close(reference, transformer["in.reference_plucker"], 1e-5)
    assert_close(depth, transformer["in.depth_embedding"][0], 1e-5)
    assert_close(features, transformer["in.features"], ATOL_FEATURES)
    assert_close(out.features, full["out.features"].reshape(8, -1), ATOL_FEATURES)
    assert_close(out.rgb, full["out.rgb"].reshape(8, 3), ATOL_RGB)


def test_golden_batch_statistics_quirk(golden_model, goldens):
    _, full = goldens
    bn1 = golden_model.encoder_model.bn1
    running_mean = bn1.running_mean.clone()
    golden_model.config.encoder_batch_statistics = True
    try:
        with torch.no_grad():
            out = golden_model(full["in.images"], _cameras(full), *_rays(full))
    finally:
        golden_model.config.encoder_batch_statistics = False
    assert_close(out.features, full["out.features_bn_batchstats"].reshape(8, -1), ATOL_FEATURES)
    assert_close(out.rgb, full["out.rgb_bn_batchstats"].reshape(8, 3), ATOL_RGB)
    assert (out.rgb - full["out.rgb"].reshape(8, 3)).abs().max() > 1e-4, "quirk had no effect"
    # running statistics and modes are left untouched
    assert torch.equal(bn1.running_mean, running_mean)
    assert not bn1.training and bn1.track_running_stats


@pytest.mark.parametrize("rays_per_chunk", [1, 3, 8])  # one ray per chunk, uneven chunks (3+3+2), one chunk
def test_ray_chunking_does_not_change_results(golden_model, goldens, rays_per_chunk):
    _, full = goldens
    with torch.no_grad():
        out = golden_model(full["in.images"], _cameras(full), *_rays(full), rays_per_chunk=rays_per_chunk)
    # chunks change only BLAS batch sizes: float32 round-off, within the goldens' atol
    assert_close(out.features, full["out.features"].reshape(8, -1), ATOL_FEATURES)
    assert_close(out.rgb, full["out.rgb"].reshape(8, 3), ATOL_RGB)
    assert out.depth_weights.shape == (3, 8, 20) and out.view_weights.shape == (3, 8)


@pytest.mark.parametrize("rays", [[0], [7], [5, 0, 2], [3, 3]], ids=str)
def test_golden_rays_in_any_batch(golden_model, goldens, rays):
    """Rays are independent: any batch of the golden rays (one, reordered, repeated) gives their
    golden outputs."""
    _, full = goldens
    origins, directions, lengths = _rays(full)
    index = torch.tensor(rays)
    with torch.no_grad():
        out = golden_model(full["in.images"], _cameras(full), origins[index], directions[index], lengths[index])
    assert_close(out.features, full["out.features"].reshape(8, -1)[index], ATOL_FEATURES)
    assert_close(out.rgb, full["out.rgb"].reshape(8, 3)[index], ATOL_RGB)
    assert out.depth_weights.shape == (3, len(rays), 20) and out.view_weights.shape == (3, len(rays))


def _look_at_cameras(n: int, distance: float, seed: int) -> NDCCameras:
    """Cameras on a sphere around the world origin, looking at it (the product's look-at)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * distance
    R, T = look_at_pytorch3d(centres, torch.zeros(3), torch.tensor([0.0, 1.0, 0.0]))
    return NDCCameras(
        R=R,
        T=T,
        focal_length=torch.full((n, 2), 2.0),
        principal_point=torch.zeros(n, 2),
    )


def test_query_tiny_shapes_and_world_rotation_invariance():
    config = EFTConfig.tiny()
    model = EpipolarFeatureTransformer(config).eval()
    images = torch.rand(2, 3, config.image_size, config.image_size)
    cameras = _look_at_cameras(3, distance=6.0, seed=4)
    rgb, features = model.query(images, cameras[1:], cameras[0])
    g = config.grid_size
    assert rgb.shape == (3, g, g) and features.shape == (config.d_model, g, g)
    assert rgb.min() > 0 and rgb.max() < 1 and not features.requires_grad

    # the EFT runs in the query frame: rotating the world about its origin (which keeps the
    # camera distances, hence the sample depths) changes nothing
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(5)))
    rotated = NDCCameras(
        R=q.T @ cameras.R,
        T=cameras.T,
        focal_length=cameras.focal_length,
        principal_point=cameras.principal_point,
    )
    rgb_rotated, features_rotated = model.query(images, rotated[1:], rotated[0])
    # float32 round-off of the frame change, within the goldens' atol
    assert_close(rgb_rotated, rgb, ATOL_RGB)
    assert_close(features_rotated, features, ATOL_FEATURES)

    # the sample depths matter: another depth centre gives other outputs
    rgb_far, _ = model.query(images, cameras[1:], cameras[0], depth_center=20.0)
    assert (rgb_far - rgb).abs().max() > 1e-4


def test_query_requires_eval_mode_and_matching_images():
    config = EFTConfig.tiny()
    model = EpipolarFeatureTransformer(config)
    cameras = _look_at_cameras(3, distance=6.0, seed=4)
    images = torch.rand(2, 3, config.image_size, config.image_size)
    with pytest.raises(RuntimeError, match="eval"):
        model.query(images, cameras[1:], cameras[0])
    with pytest.raises(ValueError, match="image_size"):
        model.eval().query(torch.rand(2, 3, 16, 16), cameras[1:], cameras[0])


def test_wrong_architecture_state_dict_is_a_clear_error():
    with torch.device("meta"):
        model = EpipolarFeatureTransformer(EFTConfig.full())
        state = model.state_dict()
        tiny_state = EpipolarFeatureTransformer(EFTConfig.tiny()).state_dict()
    state["unets.0.init_conv.weight"] = torch.zeros(1, device="meta")  # a VLDM key
    del state["encoder_model.fc.bias"]
    state["t1.pre.0.weight"] = tiny_state["t1.pre.0.weight"]
    with pytest.raises(ValueError) as error:
        load_authors_state_dict(model, state)
    message = str(error.value)
    assert "Epipolar Feature Transformer" in message and "278" in message
    assert "missing (1):\n    encoder_model.fc.bias" in message
    assert "unexpected (1):\n    unets.0.init_conv.weight" in message
    assert "wrong shape (1):\n    t1.pre.0.weight: found (16, 550), expected (256, 606)" in message

    # a tiny EFT has 1 encoder layer per transformer, not 4: 3 x 3 x 12 tensors missing
    with pytest.raises(ValueError, match=r"missing \(108\)"):
        load_authors_state_dict(model, tiny_state)


def test_config_round_trips_through_json():
    config = EFTConfig.tiny()
    assert EFTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert EFTConfig.full() == EFTConfig()
    with pytest.raises(ValueError, match="unknown EFTConfig fields"):
        EFTConfig.from_dict({"d_modle": 8})


def test_eft_runs_under_bfloat16_autocast():
    """Mixed precision (teacher training with --mixed-precision bf16): geometry stays float32."""
    from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras
    from sparsefusion_ns.teacher.eft import EFTConfig, EpipolarFeatureTransformer

    config = EFTConfig.tiny()
    eft = EpipolarFeatureTransformer(config).eval()
    views = 2
    angle = torch.tensor(0.3)
    rotation = torch.tensor(
        [[torch.cos(angle), 0, torch.sin(angle)], [0, 1, 0], [-torch.sin(angle), 0, torch.cos(angle)]]
    )
    cameras = NDCCameras(
        R=torch.stack([torch.eye(3), rotation]),
        T=torch.tensor([[0.0, 0.0, 6.0], [0.0, 0.0, 6.0]]),
        focal_length=torch.full((views, 2), 2.0),
        principal_point=torch.zeros(views, 2),
    )
    images = torch.rand(views, 3, config.image_size, config.image_size)
    origins = torch.zeros(5, 3)
    directions = torch.nn.functional.normalize(torch.randn(5, 3) * 0.1 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    lengths = torch.linspace(3, 9, config.n_points_per_ray).expand(5, -1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = eft(images, cameras, origins, directions, lengths)
    assert torch.isfinite(out.rgb.float()).all() and out.features.shape == (5, config.d_model)
