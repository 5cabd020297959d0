"""Meshes and point clouds from a trained `sparsefusion-tiny` run, on the CPU.

nerfstudio's own exporters (``ns-export pointcloud``, ``poisson``, ``tsdf``) are run in-process
through their entry classes, with sizes that take seconds; ``sf-export-density-mesh`` meshes the
density field with marching cubes. The analytic checks at the top need no trained model.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import tyro
import yaml

from sparsefusion_ns.scripts.export_density_mesh import (
    DensityMesh,
    DensityMeshExportError,
    ExportDensityMesh,
    entrypoint,
    extract_density_mesh,
    field_to_world,
    load_sparsefusion_config,
    write_ply,
)
from tests.torch_threads import torch_threads
from tests.trained_model import session_trained_model

CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def trained_config(tmp_path_factory) -> Path:
    return session_trained_model(tmp_path_factory)


@pytest.fixture(autouse=True)
def _single_thread():
    """Exporters evaluate many small batches; OpenMP threads fighting over a shared CPU slow them down."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def pipeline(trained_config):
    from nerfstudio.utils.eval_utils import eval_setup

    return eval_setup(trained_config, test_mode="inference")[1]


def _radii(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points, axis=-1)


# ---------------------------------------------------------------------------------------- analytic


class GaussianBlob:
    """σ(x) = a · exp(−|x|² / (2 s²)), whose level set σ = τ is the sphere |x| = s · sqrt(2 ln(a / τ))."""

    def __init__(self, amplitude: float = 20.0, std: float = 0.5) -> None:
        self.amplitude, self.std = amplitude, std

    def density_at(self, positions: torch.Tensor) -> torch.Tensor:
        return self.amplitude * torch.exp(-(positions**2).sum(-1, keepdim=True) / (2 * self.std**2))

    def colour_at(self, positions: torch.Tensor) -> torch.Tensor:
        return (positions.clamp(-1.0, 1.0) + 1.0) / 2.0

    def level_radius(self, threshold: float) -> float:
        return self.std * math.sqrt(2.0 * math.log(self.amplitude / threshold))


def test_density_mesh_of_a_gaussian_blob_is_its_analytic_level_sphere():
    blob = GaussianBlob()
    mesh = extract_density_mesh(blob, half_extent=2.0, resolution=48, threshold=10.0, chunk_size=5000, device=CPU)
    radius = blob.level_radius(10.0)  # ≈ 0.59
    # Marching cubes interpolates σ linearly between grid points 4/47 ≈ 0.085 apart; on this blob
    # that places vertices within 0.0011 of the sphere (measured), well inside this 0.005.
    np.testing.assert_allclose(_radii(mesh.vertices), radius, atol=0.005)
    surface = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert surface.is_watertight
    # Counter-clockwise from outside: a positive signed volume, the sphere's to within the facets'
    # shortfall (measured 1.1 % here).
    assert surface.volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.03)
    np.testing.assert_allclose(mesh.colours, blob.colour_at(torch.from_numpy(mesh.vertices)).numpy(), atol=1e-6)


def test_too_high_threshold_names_the_density_range_and_a_threshold_that_works():
    blob = GaussianBlob(amplitude=20.0)
    with pytest.raises(DensityMeshExportError, match="No surface at density threshold 1000:") as error:
        extract_density_mesh(blob, half_extent=2.0, resolution=16, threshold=1000.0, chunk_size=4096, device=CPU)
    message = str(error.value)
    low, high = (float(value) for value in message.split("ranges over [")[1].split("]")[0].split(", "))
    assert 0.0 < low < high <= blob.amplitude
    suggested = float(message.split("--threshold ")[-1].rstrip("."))
    mesh = extract_density_mesh(blob, 2.0, 16, threshold=suggested, chunk_size=4096, device=CPU)
    assert len(mesh.faces) > 0


def test_field_to_world_inverts_the_dataparser_like_nerfstudio():
    from nerfstudio.data.dataparsers.base_dataparser import transform_poses_to_original_space

    generator = torch.Generator().manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=generator))[0]
    transform = torch.cat([rotation, torch.randn(3, 1, generator=generator)], dim=1)
    points = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    poses = torch.eye(4, dtype=torch.float64)[:3].repeat(50, 1, 1)
    poses[:, :, 3] = points
    reference = transform_poses_to_original_space(poses, transform.double(), 2.5)[:, :, 3]
    np.testing.assert_allclose(field_to_world(points.numpy(), transform, 2.5), reference.numpy(), atol=1e-6)


def test_ply_round_trip(tmp_path):
    vertices = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    colours = np.array([[0.0, 0.5, 1.0], [1.0, 0.0, 0.0], [0.2, 0.4, 0.6], [0.9, 0.8, 0.7]])
    write_ply(tmp_path / "tetra.ply", DensityMesh(vertices, faces, colours), comments=("test",))
    loaded = trimesh.load(tmp_path / "tetra.ply", process=False)
    np.testing.assert_allclose(loaded.vertices, vertices, atol=1e-7)
    np.testing.assert_array_equal(loaded.faces, faces)
    np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], np.round(colours * 255))


def test_configs_of_other_methods_are_refused(tmp_path):
    from nerfstudio.engine.trainer import TrainerConfig
    from nerfstudio.models.nerfacto import NerfactoModelConfig
    from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

    path = tmp_path / "config.yml"
    nerfacto = TrainerConfig(method_name="nerfacto", pipeline=VanillaPipelineConfig(model=NerfactoModelConfig()))
    path.write_text(yaml.dump(nerfacto), "utf8")
    with pytest.raises(DensityMeshExportError, match="'nerfacto' run .*sparsefusion density fields only"):
        load_sparsefusion_config(path)
    with pytest.raises(DensityMeshExportError, match="does not exist"):
        load_sparsefusion_config(tmp_path / "missing.yml")


# ------------------------------------------------------------------------------- on a trained run


@pytest.mark.slow
def test_model_outputs_follow_the_conventions_ns_export_relies_on(pipeline):
    """ns-export keeps points whose get_rgba_image alpha exceeds 0.5 and asserts normals in [0, 1]."""
    cameras = pipeline.datamanager.train_dataparser_outputs.cameras
    rays = cameras.generate_rays(camera_indices=0).flatten()[::7]
    with torch.no_grad():
        outputs = pipeline.model(rays)
    rgba = pipeline.model.get_rgba_image(outputs, "rgb")
    torch.testing.assert_close(
        rgba[..., 3:], outputs["accumulation"], msg="get_rgba_image's alpha must be the rendered opacity"
    )
    normals = outputs["normals"]
    assert normals.min() >= 0.0 and normals.max() <= 1.0, "normals must be shaded to (n + 1) / 2, as nerfacto's"
    torch.testing.assert_close(torch.linalg.vector_norm(2 * normals - 1, dim=-1), torch.ones(len(normals)))


@pytest.mark.slow
def test_ns_export_pointcloud(trained_config, tmp_path):
    import open3d as o3d

    from nerfstudio.scripts.exporter import ExportPointCloud

    # Defaults: 1e6 points from batches of 32768 rays, minutes on a CPU; 1000 points take seconds.
    ExportPointCloud(load_config=trained_config, output_dir=tmp_path, num_points=1000, num_rays_per_batch=1024).main()
    cloud = o3d.io.read_point_cloud(str(tmp_path / "point_cloud.ply"))
    points, normals = np.asarray(cloud.points), np.asarray(cloud.normals)
    assert len(points) >= 900  # 1000 collected, then statistical outliers removed
    # Points come from opaque rays only: on the object, not at the cameras 3.5 away. The briefly
    # trained field has floaters (measured: 13 % of the points beyond 2); points of background rays
    # (alpha 0) would lie near the cameras (57 % beyond 2 when alpha is 1 everywhere).
    assert np.mean(_radii(points) > 2.0) < 0.3
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-3)


@pytest.mark.slow
def test_ns_export_poisson_with_nerf_texture(trained_config, tmp_path):
    from nerfstudio.scripts.exporter import ExportPoissonMesh

    # Defaults: 1e6 points, a 2048² texture of a 50000-face mesh; these sizes take ~15 s on a CPU.
    ExportPoissonMesh(
        load_config=trained_config,
        output_dir=tmp_path,
        num_points=1000,
        num_rays_per_batch=1024,
        target_num_faces=2000,
        num_pixels_per_side=64,
    ).main()
    poisson = trimesh.load(tmp_path / "poisson_mesh.ply", process=False)
    assert len(poisson.vertices) > 0 and len(poisson.faces) > 0
    textured = trimesh.load(tmp_path / "mesh.obj", process=False, force="mesh")
    assert 0 < len(textured.faces) <= 2000 * 1.05  # quadric decimation reaches its target to within a few faces
    assert (tmp_path / "material_0.png").stat().st_size > 0


@pytest.mark.slow
def test_ns_export_tsdf(trained_config, tmp_path):
    from nerfstudio.scripts.exporter import ExportTSDFMesh

    # Defaults: a 128³ volume and a 2048² NeRF texture; 48³ with the TSDF's own colours takes a second.
    ExportTSDFMesh(load_config=trained_config, output_dir=tmp_path, resolution=48, texture_method="tsdf").main()
    mesh = trimesh.load(tmp_path / "tsdf_mesh.ply", process=False)
    assert len(mesh.faces) > 0
    assert np.all(np.abs(mesh.vertices) <= 1.0 + 1e-6)  # the default bounding box [-1, 1]^3


@pytest.mark.slow
def test_sf_export_density_mesh_in_field_frame(trained_config, pipeline, tmp_path):
    exporter = tyro.cli(
        ExportDensityMesh,
        args=[
            "--load-config", str(trained_config), "--output-dir", str(tmp_path), "--resolution", "48",
            "--bounds-half-extent", "1.5", "--frame", "field", "--chunk-size", "20000",
        ],
    )  # fmt: skip
    mesh = trimesh.load(exporter.main(), process=False)
    assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
    assert np.all(np.abs(mesh.vertices) <= 1.5 + 1e-6)
    field = pipeline.model.field
    with torch.no_grad():
        positions = torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32))
        density = field.density_at(positions)[:, 0].numpy()
        colours = field.colour_at(positions).numpy()
    # Vertices sit on the level set σ = 10 up to linear interpolation over 3/47-wide cells:
    # |log(σ / 10)| measured 0.02 (median) and 0.08 (90th percentile).
    assert np.quantile(np.abs(np.log(density / 10.0)), 0.9) < 0.25
    # The PLY stores c(vertex) as bytes: within rounding (0.5/255) plus float32 vertex storage.
    np.testing.assert_allclose(mesh.visual.vertex_colors[:, :3] / 255.0, colours, atol=0.5 / 255 + 1e-4)


@pytest.mark.slow
def test_sf_export_density_mesh_world_frame_is_the_scene_frame(trained_config, pipeline, tmp_path):
    common = dict(load_config=trained_config, resolution=40, bounds_half_extent=1.5, threshold=5.0)
    field_ply = ExportDensityMesh(output_dir=tmp_path / "field", frame="field", **common).main()
    world_ply = ExportDensityMesh(output_dir=tmp_path / "world", **common).main()
    field_mesh, world_mesh = (trimesh.load(ply, process=False) for ply in (field_ply, world_ply))
    saved = json.loads((trained_config.parent / "dataparser_transforms.json").read_text())
    transform, scale = np.asarray(saved["transform"]), saved["scale"]
    # p_field = s · (A p_world + t), with [A | t] and s as ns-train saved them next to the config.
    back_in_field = scale * (world_mesh.vertices @ transform[:, :3].T + transform[:, 3])
    np.testing.assert_allclose(back_in_field, field_mesh.vertices, atol=1e-5)  # float32 storage
    np.testing.assert_array_equal(world_mesh.faces, field_mesh.faces)  # a rotation keeps the winding
    # The same map takes the input cameras back to their positions in the scene's transforms.json.
    parsed = pipeline.datamanager.train_dataparser_outputs
    frames = json.loads((Path(pipeline.datamanager.config.data) / "transforms.json").read_text())["frames"]
    scene_centres = np.array([frames[i]["transform_matrix"] for i in parsed.metadata["frame_indices"]])[:, :3, 3]
    field_centres = parsed.cameras.camera_to_worlds[:, :3, 3].double().numpy()
    mapped = field_to_world(field_centres, parsed.dataparser_transform, parsed.dataparser_scale)
    np.testing.assert_allclose(mapped, scene_centres, atol=1e-5)  # float32 camera poses


@pytest.mark.slow
def test_sf_export_density_mesh_cli_reports_a_threshold_above_the_field(trained_config, tmp_path, monkeypatch, capsys):
    args = ["--load-config", str(trained_config), "--output-dir", str(tmp_path), "--resolution", "16"]
    monkeypatch.setattr(sys, "argv", ["sf-export-density-mesh", *args, "--threshold", "1e9"])
    with pytest.raises(SystemExit) as exit_info:
        entrypoint()
    assert exit_info.value.code == 1
    output = " ".join(capsys.readouterr().out.split())
    assert "No surface at density threshold 1e+09" in output and "--threshold" in output
    assert not (tmp_path / "density_mesh.ply").exists()
