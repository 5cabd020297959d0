"""``sf-export``: point clouds and meshes of the whole object, from cameras all around it.

nerfstudio's ``ns-export pointcloud`` / ``poisson`` sample rays of the *training* cameras
(``exporter_utils.generate_point_cloud`` draws them from ``datamanager.next_train``) and
``ns-export tsdf`` fuses depth maps of the training cameras. With 2–3 input views that covers only
what the inputs saw, which is exactly what SparseFusion adds to. ``sf-export`` runs the same
exports through nerfstudio's own utilities with other cameras (``--cameras.source``):

- ``orbit`` (default): rings of cameras on the circle fitted to the input cameras (the distillation
  pool's geometry, ``distillation/novel_cameras.py``), ``--cameras.num-per-ring`` per ring, one
  ring per ``--cameras.elevations-deg`` (raised above the circle as seen from the look-at point);
- ``pool``: the distillation's novel-camera pool of the run (inputs, circle and random orbit
  cameras, with the run's jitter), as step (B) renders it;
- ``inputs``: the input cameras, as ``ns-export``.

Subcommands:

- ``pointcloud``: ``generate_point_cloud`` on rays drawn uniformly from those cameras (the points
  of opaque rays, accumulation > 0.5, at their expected depth; the model's normals; statistical
  outlier removal) → ``point_cloud.ply``;
- ``poisson``: the same point cloud, then open3d's screened Poisson reconstruction with the
  lowest-density tenth of the vertices removed, as ``ns-export poisson`` → ``poisson_mesh.ply``
  (vertex colours from the points) and ``point_cloud.ply``;
- ``tsdf``: nerfstudio's ``TSDF`` volume fusing a depth map per camera in one pass
  (:mod:`sparsefusion_ns.utils.tsdf_fusion`: one projection per camera, nerfstudio's update rule). Pixels the field
  leaves transparent (accumulation < 0.5) get a depth beyond the volume, so they carve free
  space: with cameras all around, that is the object's visual hull refined by the depths. Voxels
  no camera sees are free space (nerfstudio's own integration leaves them solid, which walls the
  mesh in where frusta end) → ``tsdf_mesh.ply``.

Files are written in the scene's own frame (``--frame world``, the default: the dataparser's
transform and scale inverted, as ``sf-export-density-mesh``) or the field's (``--frame field``,
nerfstudio's exports). The model renders on the run's device (CPU works: the pure-torch sampler).

    sf-export pointcloud --load-config outputs/.../config.yml --output-dir export/
    sf-export poisson --load-config outputs/.../config.yml --output-dir export/ --cameras.source pool
    sf-export tsdf --load-config outputs/.../config.yml --output-dir export/ --resolution 128
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Dict, List, Literal, Optional, Tuple, Union

import numpy as np
import torch
import tyro
from jaxtyping import Float
from rich.markup import escape
from torch import Tensor
from typing_extensions import Annotated

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.cameras.conventions import ndc_to_nerfstudio
from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras
from sparsefusion_ns.distillation.novel_cameras import NovelCameraPoolConfig, build_novel_camera_pool, orbit_cameras
from sparsefusion_ns.distillation.teacher_inputs import ndc_cameras
from sparsefusion_ns.engine.checkpoints import CheckpointError
from sparsefusion_ns.scripts.export_density_mesh import DensityMeshExportError, field_to_world, load_sparsefusion_config
from sparsefusion_ns.utils.output_folders import prepare_output_folder
from sparsefusion_ns.utils.ply import write_ply
from sparsefusion_ns.utils.summary import print_summary, progress_bar
from sparsefusion_ns.utils.tsdf_fusion import fuse_depth_maps

if TYPE_CHECKING:
    from nerfstudio.pipelines.base_pipeline import Pipeline


class ExportError(RuntimeError):
    """The export cannot be made (the message says why and what to change)."""


@dataclass
class ExportCameras:
    """The cameras an export renders (``--cameras.*``); module docstring."""

    source: Literal["orbit", "pool", "inputs"] = "orbit"
    """'orbit': rings on the circle fitted to the input cameras; 'pool': the run's distillation pool
    of novel cameras; 'inputs': the input cameras (what ns-export uses)."""
    num_per_ring: int = 24
    """Orbit: cameras per ring, evenly spaced over 360°."""
    elevations_deg: Tuple[float, ...] = (-30.0, 0.0, 30.0, 60.0)
    """Orbit: one ring per elevation, in degrees above the fitted circle as seen from the look-at point."""
    resolution: int = 0
    """Orbit and pool: side of the square images rendered, in pixels; 0: the input views' height."""
    seed: int = 0
    """Pool: seed of its elevation jitter and random azimuths (the run's is distillation.seed)."""


def export_cameras(pipeline: Pipeline, options: ExportCameras) -> Cameras:
    """The cameras of ``options`` for a loaded run, in the field's frame, on the CPU."""
    inputs = pipeline.datamanager.train_dataset.cameras.to("cpu")
    if options.source == "inputs":
        return inputs
    known: NDCCameras = ndc_cameras(inputs)
    side = options.resolution or int(inputs.height[0, 0])
    if options.source == "pool":
        distillation = getattr(pipeline.model.config, "distillation", None)
        pool_config = distillation.pool if distillation is not None else NovelCameraPoolConfig()
        pool_config = dataclasses.replace(pool_config, source="inputs")  # export never uses held-out poses
        pool = build_novel_camera_pool(pool_config, known, torch.Generator().manual_seed(options.seed))
        return ndc_to_nerfstudio(pool.cameras, (side, side))
    if not options.elevations_deg or options.num_per_ring < 1:
        raise ExportError("--cameras.elevations-deg needs at least one elevation and --cameras.num-per-ring ≥ 1.")
    if any(abs(e) >= 89.0 for e in options.elevations_deg):
        raise ExportError(
            "--cameras.elevations-deg: every ring must stay below ±89° (cameras at the pole have no roll)."
        )
    rings = [orbit_cameras(known, options.num_per_ring, math.radians(e))[0] for e in options.elevations_deg]
    return ndc_to_nerfstudio(NDCCameras.cat(rings), (side, side))


class CameraRays:
    """Random rays of a set of cameras, as ``generate_point_cloud`` reads them from a datamanager.

    ``next_train`` returns ``num_rays`` rays through uniformly drawn pixels (centres) of uniformly
    drawn cameras, on ``device``; the generator makes the draws repeatable."""

    def __init__(self, cameras: Cameras, num_rays: int, device: torch.device, seed: int = 0) -> None:
        self.cameras = cameras.to("cpu")
        self.num_rays = num_rays
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)

    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        cameras, n, generator = self.cameras, self.num_rays, self.generator
        index = torch.randint(len(cameras), (n,), generator=generator)
        rows = (torch.rand(n, generator=generator) * cameras.height[index, 0]).floor() + 0.5
        columns = (torch.rand(n, generator=generator) * cameras.width[index, 0]).floor() + 0.5
        coords = torch.stack([rows, columns], dim=-1)
        rays = cameras.generate_rays(camera_indices=index[:, None], coords=coords)
        return rays.to(self.device), {}


@dataclass
class Exporter:
    """What every ``sf-export`` subcommand takes."""

    load_config: Path
    """config.yml of the trained run (written by ns-train next to nerfstudio_models/)."""
    output_dir: Path
    """Folder to write into."""
    cameras: ExportCameras = field(default_factory=ExportCameras)
    """The cameras the export renders."""
    frame: Literal["world", "field"] = "world"
    """'world': the scene's own frame (the dataparser's transform and scale inverted); 'field': the
    coordinates the field is trained in (as ns-export writes)."""
    overwrite: bool = False
    """Write into a non-empty output folder (this command's earlier files there are replaced)."""

    outputs: Tuple[str, ...] = dataclasses.field(default=(), init=False)
    """Names of the files the subcommand writes."""
    title: str = dataclasses.field(default="Export Complete", init=False)
    """Title of the summary panel printed at the end."""

    def setup(self) -> Tuple[Pipeline, Cameras]:
        """Check the config, prepare the folder, load the run; (pipeline, cameras to render)."""
        from sparsefusion_ns.engine.eval_setup import setup_pipeline

        config = load_sparsefusion_config(self.load_config)
        prepare_output_folder(self.output_dir, self.overwrite, "sf-export --output-dir", own_outputs=self.outputs)
        try:
            pipeline, _, _ = setup_pipeline(config, test_mode="inference")
        except CheckpointError as error:
            raise ExportError(str(error)) from None
        cameras = export_cameras(pipeline, self.cameras)
        CONSOLE.print(f"Rendering {len(cameras)} {self.cameras.source} cameras of {escape(str(self.load_config))}")
        return pipeline, cameras

    def to_output_frame(
        self, pipeline: Pipeline, points: Float[np.ndarray, "n 3"], normals: Optional[Float[np.ndarray, "n 3"]]
    ) -> Tuple[np.ndarray, Optional[np.ndarray], bool]:
        """Points (and normals) in the output frame, and whether the map reflects (flips triangle winding)."""
        if self.frame == "field":
            return points, normals, False
        parsed = pipeline.datamanager.train_dataparser_outputs
        linear = parsed.dataparser_transform[:, :3].double().cpu().numpy()
        points = field_to_world(points, parsed.dataparser_transform, parsed.dataparser_scale)
        if normals is not None:
            normals = normals @ linear  # normals map by the inverse transpose of A⁻¹, i.e. Aᵀ n: rows n A
            normals = normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
        return points, normals, bool(np.linalg.det(linear) < 0)

    def finish(self, written: List[Path], details: List[Tuple[str, object]]) -> List[Path]:
        rows = [(path.name, path) for path in written] + details
        rows += [("Cameras", f"{self.cameras.source}"), ("Frame", self.frame)]
        print_summary(self.title, rows)
        return written


def _point_cloud(pipeline: Pipeline, cameras: Cameras, num_points: int, num_rays_per_batch: int, remove_outliers: bool,
                 std_ratio: float):  # fmt: skip
    """nerfstudio's ``generate_point_cloud`` on rays of ``cameras`` (the model's normals)."""
    from nerfstudio.exporter.exporter_utils import generate_point_cloud

    model = pipeline.model
    predict_normals = model.config.predict_normals
    model.config.predict_normals = True  # rendered when not training; nerfstudio reads them as "normals"
    try:
        source = SimpleNamespace(datamanager=CameraRays(cameras, num_rays_per_batch, pipeline.device), model=model)
        return generate_point_cloud(
            pipeline=source,  # type: ignore[arg-type]  # what it reads: datamanager.next_train and model
            num_points=num_points,
            remove_outliers=remove_outliers,
            estimate_normals=False,
            reorient_normals=False,
            normal_output_name="normals",
            std_ratio=std_ratio,
        )
    finally:
        model.config.predict_normals = predict_normals


@dataclass
class ExportPointCloud(Exporter):
    """A point cloud of the whole object (nerfstudio's generate_point_cloud on the export cameras)."""

    num_points: int = 200_000
    """Points collected (fewer remain after outlier removal)."""
    num_rays_per_batch: int = 8192
    """Rays rendered per batch."""
    remove_outliers: bool = True
    """Remove statistical outliers (open3d, 20 neighbours)."""
    std_ratio: float = 10.0
    """Outlier threshold, in standard deviations of the mean neighbour distance (nerfstudio's default)."""
    outputs: Tuple[str, ...] = dataclasses.field(default=("point_cloud.ply",), init=False)
    title: str = dataclasses.field(default="Point Cloud Exported", init=False)

    def main(self) -> List[Path]:
        pipeline, cameras = self.setup()
        cloud = _point_cloud(pipeline, cameras, self.num_points, self.num_rays_per_batch, self.remove_outliers,
                             self.std_ratio)  # fmt: skip
        path = self.write_cloud(pipeline, cloud)
        return self.finish([path], [("Points", len(cloud.points))])

    def write_cloud(self, pipeline: Pipeline, cloud) -> Path:
        points, normals, _ = self.to_output_frame(pipeline, np.asarray(cloud.points), np.asarray(cloud.normals))
        return write_ply(self.output_dir / "point_cloud.ply", points, np.asarray(cloud.colors), normals=normals,
                         comments=(f"sf-export pointcloud, {self.cameras.source} cameras, frame {self.frame}",))  # fmt: skip


@dataclass
class ExportPoissonMesh(ExportPointCloud):
    """A Poisson surface of the whole object's point cloud (as ns-export poisson, other cameras)."""

    depth: int = 9
    """Octree depth of the Poisson reconstruction (open3d; nerfstudio uses 9)."""
    density_quantile: float = 0.1
    """Vertices whose Poisson density is below this quantile are removed (nerfstudio: 0.1)."""
    outputs: Tuple[str, ...] = dataclasses.field(default=("point_cloud.ply", "poisson_mesh.ply"), init=False)
    title: str = dataclasses.field(default="Poisson Mesh Exported", init=False)

    def main(self) -> List[Path]:
        import open3d as o3d

        pipeline, cameras = self.setup()
        cloud = _point_cloud(pipeline, cameras, self.num_points, self.num_rays_per_batch, self.remove_outliers,
                             self.std_ratio)  # fmt: skip
        if len(cloud.points) < 10:
            raise ExportError(
                f"Only {len(cloud.points)} opaque points were found from the {self.cameras.source} cameras: the field "
                "renders (almost) nothing opaque there. Check the run, or the cameras (--cameras.*)."
            )
        cloud_path = self.write_cloud(pipeline, cloud)
        CONSOLE.print("Computing the Poisson surface …")
        mesh, densities = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(cloud, depth=self.depth)
        densities = np.asarray(densities)
        mesh.remove_vertices_by_mask(densities < np.quantile(densities, self.density_quantile))
        vertices, normals, flipped = self.to_output_frame(
            pipeline, np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals) if mesh.has_vertex_normals() else None
        )
        faces = np.asarray(mesh.triangles)
        if flipped:
            faces = np.ascontiguousarray(faces[:, ::-1])
        colours = np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else np.full_like(vertices, 0.5)
        mesh_path = write_ply(self.output_dir / "poisson_mesh.ply", vertices, colours, faces=faces, normals=normals,
                              comments=(f"sf-export poisson, {self.cameras.source} cameras, frame {self.frame}",))  # fmt: skip
        return self.finish(
            [mesh_path, cloud_path], [("Vertices", len(vertices)), ("Faces", len(faces)), ("Points", len(cloud.points))]
        )


@dataclass
class ExportTSDFMesh(Exporter):
    """A TSDF-fused mesh of the whole object (nerfstudio's TSDF volume, depth maps of the export cameras)."""

    resolution: int = 128
    """Voxels along each side of the volume."""
    batch_size: int = 4
    """Depth maps fused at a time (memory: about batch × resolution³ × 60 bytes)."""
    bounding_box_min: Optional[Tuple[float, float, float]] = None
    """Corner of the volume in field coordinates. None: a cube around the look-at point that the
    orbit cameras see whole (half side = orbit radius × sin(half the field of view)), within the scene box."""
    bounding_box_max: Optional[Tuple[float, float, float]] = None
    """Opposite corner of the volume in field coordinates (with --bounding-box-min)."""
    opacity_threshold: float = 0.5
    """Pixels whose accumulation is below this carve free space (their depth is set beyond the volume)."""
    outputs: Tuple[str, ...] = dataclasses.field(default=("tsdf_mesh.ply",), init=False)
    title: str = dataclasses.field(default="TSDF Mesh Exported", init=False)

    def volume_box(self, pipeline: Pipeline) -> Float[Tensor, "2 3"]:
        if (self.bounding_box_min is None) != (self.bounding_box_max is None):
            raise ExportError("Pass both --bounding-box-min and --bounding-box-max, or neither.")
        if self.bounding_box_min is not None and self.bounding_box_max is not None:
            box = torch.tensor([self.bounding_box_min, self.bounding_box_max], dtype=torch.float32)
            if not bool((box[1] > box[0]).all()):
                raise ExportError(
                    f"--bounding-box-max {self.bounding_box_max} must exceed --bounding-box-min on every axis."
                )
            return box
        inputs = pipeline.datamanager.train_dataset.cameras.to("cpu")
        _, circle, look_at = orbit_cameras(ndc_cameras(inputs), 1)
        fov = 2 * math.atan(float(inputs.height[0, 0]) / 2 / float(inputs.fy[0, 0]))
        half = circle.radius * math.sin(fov / 2)
        box = torch.stack([look_at - half, look_at + half])
        scene = pipeline.datamanager.train_dataparser_outputs.scene_box.aabb.float().cpu()
        return torch.stack([torch.maximum(box[0], scene[0]), torch.minimum(box[1], scene[1])])

    @torch.no_grad()
    def main(self) -> List[Path]:
        from nerfstudio.exporter.tsdf_utils import TSDF

        pipeline, cameras = self.setup()
        model, device = pipeline.model, pipeline.device
        box = self.volume_box(pipeline)
        dims = torch.tensor([self.resolution] * 3)
        tsdf = TSDF.from_aabb(box, volume_dims=dims).to(device)
        far = float((box.norm(dim=-1).max() + cameras.camera_to_worlds[:, :, 3].norm(dim=-1).max()) * 4)
        c2w = torch.cat(
            [cameras.camera_to_worlds, torch.tensor([[[0.0, 0.0, 0.0, 1.0]]]).expand(len(cameras), 1, 4)], 1
        )
        intrinsics = cameras.get_intrinsics_matrices()
        predict_normals = model.config.predict_normals
        model.config.predict_normals = False  # the TSDF needs colour and depth only
        colours, depths = [], []
        try:
            with progress_bar("Rendering depth maps") as progress:
                task = progress.add_task("render", total=len(cameras))
                for index in range(len(cameras)):
                    outputs = model.get_outputs_for_camera(cameras[index : index + 1].to(device))
                    depth = torch.where(outputs["accumulation"] >= self.opacity_threshold, outputs["depth"], far)
                    depths.append(depth.permute(2, 0, 1))
                    colours.append(model.get_rgba_image(outputs)[..., :3].permute(2, 0, 1))
                    progress.advance(task)
        finally:
            model.config.predict_normals = predict_normals
        # one projection of the voxels per camera: the surface, and free space where no camera looks
        fuse_depth_maps(tsdf, c2w, intrinsics, torch.stack(depths), torch.stack(colours), self.batch_size)
        if not (float(tsdf.values.min()) < 0.0 < float(tsdf.values.max())):
            raise ExportError(
                f"No surface in the TSDF volume {box.tolist()} (field frame): the {self.cameras.source} cameras see "
                "nothing opaque in it. Pass a volume with --bounding-box-min/max, or check the run."
            )
        mesh = tsdf.get_mesh()
        vertices, normals, flipped = self.to_output_frame(
            pipeline, mesh.vertices.double().cpu().numpy(), mesh.normals.double().cpu().numpy()
        )
        faces = mesh.faces.cpu().numpy().astype(np.int64)
        if flipped:
            faces = np.ascontiguousarray(faces[:, ::-1])
        assert mesh.colors is not None
        path = write_ply(self.output_dir / "tsdf_mesh.ply", vertices, mesh.colors.cpu().numpy(), faces=faces,
                         normals=normals, comments=(f"sf-export tsdf, {self.cameras.source} cameras, frame {self.frame}",
                                                    f"volume {box.tolist()} (field frame), {self.resolution}^3 voxels"))  # fmt: skip
        return self.finish(
            [path], [("Vertices", len(vertices)), ("Faces", len(faces)), ("Cameras rendered", len(cameras))]
        )


Commands = Union[
    Annotated[ExportPointCloud, tyro.conf.subcommand(name="pointcloud")],
    Annotated[ExportPoissonMesh, tyro.conf.subcommand(name="poisson")],
    Annotated[ExportTSDFMesh, tyro.conf.subcommand(name="tsdf")],
]


def entrypoint() -> None:
    """Entry point of ``sf-export``."""
    tyro.extras.set_accent_color("bright_yellow")
    command = tyro.cli(Commands)  # type: ignore[call-overload]
    try:
        command.main()
    except (ExportError, DensityMeshExportError, OSError) as error:  # OSError: output folder refused, disk full
        CONSOLE.print(f"[bold red]Error:[/bold red] {escape(str(error))}", soft_wrap=True, highlight=False)
        raise SystemExit(1) from None


if __name__ == "__main__":
    entrypoint()
