"""Mesh a trained SparseFusion field's density with marching cubes (``sf-export-density-mesh``).

nerfstudio's ``ns-export marching-cubes`` meshes SDF fields only. SparseFusion's field is a volume
density σ(x) with an albedo c(x) (docs/method.md#field), so its surface is taken here as the
level set σ(x) = τ:

  1. σ is evaluated on a regular grid of ``resolution``³ points over the cube [-h, h]³ (field
     coordinates, h = the field's half extent unless ``--bounds-half-extent`` says otherwise);
  2. marching cubes extracts the surface σ = τ, triangles wound counter-clockwise seen from outside
     (outward normals by the right-hand rule);
  3. each vertex is coloured with the albedo c(vertex);
  4. vertices are mapped to the scene's world frame (``--frame world``, the default) by inverting the
     dataparser's transform, p_world = A⁻¹ (p_field / s − t) for the stored dataparser transform
     [A | t] and scale s, or kept in field coordinates (``--frame field``).

The default threshold is τ = 10, the mesh threshold of torch-ngp, the Instant-NGP implementation
the authors' field is built on (same trunc_exp density). A slab ln 2 / τ ≈ 0.07 thick is half
opaque at that density: about one cell of the default 128³ grid over [-4, 4]³ (spacing
Δ = 8 / 127 ≈ 0.063, ln 2 / Δ ≈ 11). The level does not move with ``--resolution``. Briefly
trained fields are softer (object densities of a few units): the exporter prints the density range
it found; lower ``--threshold`` if the mesh misses parts of the object, raise it if it wraps floaters.

    sf-export-density-mesh --load-config outputs/scene/sparsefusion/<run>/config.yml --output-dir exports/
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Optional, Tuple

import numpy as np
import torch
import tyro
from jaxtyping import Float, Int
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from torch import Tensor

from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.engine.checkpoints import CheckpointError
from sparsefusion_ns.engine.config_files import RunConfigError, load_run_config
from sparsefusion_ns.utils import ply
from sparsefusion_ns.utils.output_folders import prepare_output_folder
from sparsefusion_ns.utils.summary import print_summary

if TYPE_CHECKING:
    from nerfstudio.engine.trainer import TrainerConfig

    from sparsefusion_ns.field.sparsefusion_field import SparseFusionField


class DensityMeshExportError(RuntimeError):
    """The density mesh cannot be exported (wrong config, or no surface at the threshold)."""


@dataclass
class DensityMesh:
    """A triangle mesh with per-vertex colours."""

    vertices: Float[np.ndarray, "num_vertices 3"]
    """Vertex positions."""
    faces: Int[np.ndarray, "num_faces 3"]
    """Vertex indices of each triangle, counter-clockwise seen from outside."""
    colours: Float[np.ndarray, "num_vertices 3"]
    """Albedo c(x) at each vertex, in [0, 1]."""


def grid_axis(half_extent: float, resolution: int, device: torch.device) -> Float[Tensor, " resolution"]:
    """Coordinates of the grid points along each axis: ``resolution`` points from −h to h."""
    return torch.linspace(-half_extent, half_extent, resolution, device=device)


@torch.no_grad()
def density_grid(
    density_at: Callable[[Tensor], Tensor],
    half_extent: float,
    resolution: int,
    chunk_size: int,
    device: torch.device,
) -> Float[np.ndarray, "resolution resolution resolution"]:
    """σ on the grid, indexed [i, j, k] ↔ (x, y, z) = (axis[i], axis[j], axis[k]).

    Grid points are generated chunk by chunk, so memory stays at ``chunk_size`` points whatever the
    resolution."""
    axis = grid_axis(half_extent, resolution, device)
    total = resolution**3
    volume = torch.empty(total, dtype=torch.float32)
    progress = Progress(
        TextColumn("Evaluating the density grid"),
        BarColumn(),
        TaskProgressColumn(show_speed=True),
        TimeRemainingColumn(elapsed_when_finished=True, compact=True),
        console=CONSOLE,
    )
    with progress:
        task = progress.add_task("density", total=total)
        for start in range(0, total, chunk_size):
            flat = torch.arange(start, min(start + chunk_size, total), device=device)
            i, j, k = flat // (resolution * resolution), (flat // resolution) % resolution, flat % resolution
            positions = torch.stack([axis[i], axis[j], axis[k]], dim=-1)
            volume[start : start + len(flat)] = density_at(positions)[..., 0].float().cpu()
            progress.advance(task, len(flat))
    return volume.reshape(resolution, resolution, resolution).numpy()


def suggested_threshold(volume: np.ndarray) -> float:
    """Halfway, in log scale, between the median density (mostly empty space) and the largest one."""
    median, peak = float(np.median(volume)), float(volume.max())
    return math.sqrt(max(median, peak * 1e-6) * peak)


def marching_cubes(
    volume: Float[np.ndarray, "r r r"], threshold: float, half_extent: float
) -> Tuple[Float[np.ndarray, "v 3"], Int[np.ndarray, "f 3"]]:
    """The surface σ = τ of a density grid over [-h, h]³, in the grid's coordinates."""
    from skimage import measure

    low, high = float(volume.min()), float(volume.max())
    if not low < threshold < high:
        raise DensityMeshExportError(
            f"No surface at density threshold {threshold:.4g}: the density on the grid ranges over "
            f"[{low:.4g}, {high:.4g}]. Pass a threshold inside that range, e.g. --threshold "
            f"{suggested_threshold(volume):.3g}."
        )
    spacing = 2.0 * half_extent / (volume.shape[0] - 1)
    # "ascent" winds the triangles of a quantity that is larger inside counter-clockwise from outside.
    vertices, faces, _, _ = measure.marching_cubes(
        volume, level=threshold, spacing=(spacing,) * 3, gradient_direction="ascent", allow_degenerate=False
    )
    return vertices - half_extent, faces


@torch.no_grad()
def vertex_colours(
    colour_at: Callable[[Tensor], Tensor],
    vertices: Float[np.ndarray, "v 3"],
    chunk_size: int,
    device: torch.device,
) -> Float[np.ndarray, "v 3"]:
    """Albedo c(x) at each vertex (field coordinates)."""
    points = torch.from_numpy(np.ascontiguousarray(vertices, dtype=np.float32))
    return torch.cat([colour_at(chunk.to(device)).float().cpu() for chunk in torch.split(points, chunk_size)]).numpy()


def field_to_world(
    points: Float[np.ndarray, "n 3"], dataparser_transform: Float[Tensor, "3 4"], dataparser_scale: float
) -> Float[np.ndarray, "n 3"]:
    """Invert the dataparser: p_field = s · (A p_world + t), so p_world = A⁻¹ (p_field / s − t)."""
    transform = dataparser_transform.detach().double().cpu().numpy()
    linear, translation = transform[:, :3], transform[:, 3]
    return np.linalg.solve(linear, (points / dataparser_scale - translation).T).T


def write_ply(path: Path, mesh: DensityMesh, comments: Tuple[str, ...] = ()) -> None:
    """Binary little-endian PLY: float xyz and uchar rgb per vertex, triangles as index lists."""
    ply.write_ply(path, mesh.vertices, mesh.colours, faces=mesh.faces, comments=comments)


def extract_density_mesh(
    field: SparseFusionField,
    half_extent: float,
    resolution: int,
    threshold: float,
    chunk_size: int,
    device: torch.device,
) -> DensityMesh:
    """Mesh the surface σ = τ of a SparseFusion field over [-h, h]³ (field coordinates).

    ``threshold`` is the density τ; vertices come out in field coordinates."""
    if resolution < 2:
        raise DensityMeshExportError(f"--resolution must be at least 2 (got {resolution}).")
    if half_extent <= 0:
        raise DensityMeshExportError(f"--bounds-half-extent must be positive (got {half_extent}).")
    volume = density_grid(field.density_at, half_extent, resolution, chunk_size, device)
    CONSOLE.print(
        f"Density on the {resolution}³ grid over [-{half_extent:g}, {half_extent:g}]³: min {volume.min():.4g}, "
        f"median {np.median(volume):.4g}, max {volume.max():.4g}; surface at σ = {threshold:.4g} "
        f"({100 * np.mean(volume > threshold):.3g} % of the grid points inside)"
    )
    vertices, faces = marching_cubes(volume, threshold, half_extent)
    colours = vertex_colours(field.colour_at, vertices, chunk_size, device)
    return DensityMesh(vertices=vertices, faces=faces, colours=colours)


def load_sparsefusion_config(load_config: Path) -> TrainerConfig:
    """Read a run's config.yml (restricted loader: the file cannot run code) and check that it
    trained a SparseFusion model."""
    from sparsefusion_ns.model.sparsefusion_model import SparseFusionModelConfig

    try:
        config = load_run_config(load_config)
    except RunConfigError as error:
        raise DensityMeshExportError(str(error)) from None
    if not isinstance(config.pipeline.model, SparseFusionModelConfig):
        raise DensityMeshExportError(
            f"{load_config} is a '{config.method_name}' run ({type(config.pipeline.model).__name__}); "
            "sf-export-density-mesh meshes sparsefusion density fields only. Use ns-export (pointcloud, "
            "poisson, tsdf, marching-cubes) for other methods."
        )
    return config


@dataclass
class ExportDensityMesh:
    """Mesh the density of a trained sparsefusion / sparsefusion-tiny model with marching cubes."""

    load_config: Path
    """config.yml of the trained run (written by ns-train next to nerfstudio_models/)."""
    output_dir: Path
    """Folder to write the mesh into."""
    resolution: int = 128
    """Grid points along each axis of the bounds."""
    threshold: float = 10.0
    """Density τ of the surface σ(x) = τ (torch-ngp's default; a slab ln 2 / τ ≈ 0.07 thick is half
    opaque). Lower it (e.g. 1–2) for briefly trained, soft fields."""
    bounds_half_extent: Optional[float] = None
    """Mesh inside [-h, h]³ in field coordinates. None: the field's whole box."""
    chunk_size: int = 65536
    """Grid points evaluated per forward pass of the field."""
    frame: Literal["world", "field"] = "world"
    """'world': vertices in the scene's own frame (the dataparser's transform and scale inverted), as
    the input cameras are given in transforms.json. 'field': the coordinates the field is trained in."""
    output_name: str = "density_mesh.ply"
    """Name of the PLY file written in output_dir."""
    overwrite: bool = False
    """Write into a non-empty output folder (an earlier file of the same output name is replaced)."""

    def main(self) -> Path:
        """Export the mesh and return the path of the PLY file."""
        from sparsefusion_ns.engine.eval_setup import setup_pipeline

        config = load_sparsefusion_config(self.load_config)
        prepare_output_folder(
            self.output_dir, self.overwrite, "sf-export-density-mesh --output-dir", own_outputs=(self.output_name,)
        )
        try:
            pipeline, _, _ = setup_pipeline(config, test_mode="inference")
        except CheckpointError as error:
            raise DensityMeshExportError(str(error)) from None
        field = pipeline.model.field
        half_extent = field.half_extent if self.bounds_half_extent is None else self.bounds_half_extent
        mesh = extract_density_mesh(
            field, half_extent, self.resolution, self.threshold, self.chunk_size, pipeline.device
        )

        frame_comment = "frame field (the coordinates the field is trained in)"
        if self.frame == "world":
            parsed = pipeline.datamanager.train_dataparser_outputs
            mesh.vertices = field_to_world(mesh.vertices, parsed.dataparser_transform, parsed.dataparser_scale)
            if np.linalg.det(parsed.dataparser_transform[:, :3].double().cpu().numpy()) < 0:
                mesh.faces = np.ascontiguousarray(mesh.faces[:, ::-1])  # a reflection flips the winding
            frame_comment = "frame world (the scene's frame: dataparser transform and scale inverted)"

        path = self.output_dir / self.output_name
        write_ply(
            path,
            mesh,
            comments=(
                "sf-export-density-mesh: marching cubes of a sparsefusion density field",
                frame_comment,
                f"density threshold {self.threshold:.6g}, resolution {self.resolution}, half extent {half_extent:g}",
            ),
        )
        print_summary(
            "Density Mesh Exported",
            [
                (path.name, path),
                ("Vertices", len(mesh.vertices)),
                ("Faces", len(mesh.faces)),
                (
                    "Surface",
                    f"σ = {self.threshold:g} on a {self.resolution}³ grid over [-{half_extent:g}, {half_extent:g}]³",
                ),
                ("Frame", self.frame),
            ],
        )
        return path


def entrypoint() -> None:
    """Entry point of ``sf-export-density-mesh``."""
    tyro.extras.set_accent_color("bright_yellow")
    exporter = tyro.cli(ExportDensityMesh)
    try:
        exporter.main()
    except (DensityMeshExportError, OSError) as error:  # OSError: output folder refused, disk full
        CONSOLE.print(f"[bold red]Error:[/bold red] {escape(str(error))}", soft_wrap=True, highlight=False)
        raise SystemExit(1) from None


if __name__ == "__main__":
    entrypoint()
