"""Write a small synthetic masked-object scene in nerfstudio format (the project's demo data).

The object is analytic, so the scene needs no download: a red sphere resting on a blue box with a
green cylinder beside it, ray-cast (``sparsefusion_ns.synthetic``) with Lambertian shading from
cameras on a sphere around the origin. Images are RGBA PNGs whose alpha is the exact foreground mask; ``transforms.json``
stores OpenGL camera-to-world matrices and pinhole intrinsics, as nerfstudio expects.

    sf-make-demo-scene --output demo/scene --num-views 24 --resolution 96
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import tyro
from PIL import Image
from rich.markup import escape

from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.cameras.conventions import pytorch3d_to_opengl_pose
from sparsefusion_ns.cameras.look_at import look_at_pytorch3d
from sparsefusion_ns.synthetic.render import render_opengl_view
from sparsefusion_ns.synthetic.shapes import Box, Cylinder, Lighting, Part, ShapeScene, Sphere
from sparsefusion_ns.utils.atomic_files import write_text_atomically
from sparsefusion_ns.utils.output_folders import prepare_output_folder


@dataclass
class DemoSceneConfig:
    """Options of ``sf-make-demo-scene``."""

    output: Path = Path("demo/scene")
    """Folder to write (``transforms.json`` and ``images/``)."""
    num_views: int = 24
    """Number of views on the viewing sphere."""
    resolution: int = 96
    """Width and height of the square images, in pixels."""
    radius: float = 3.5
    """Distance of the cameras from the origin."""
    focal_factor: float = 1.4
    """Focal length in units of the image width."""
    seed: int = 0
    """Seed of the camera elevations."""
    overwrite: bool = False
    """Write into a non-empty output folder (its transforms.json and images/frame_*.png are replaced)."""


DEMO_OBJECT = ShapeScene(
    parts=(
        Part(Sphere((0.0, 0.0, 0.35), 0.45), (0.85, 0.2, 0.15), "sphere"),
        Part(Box((0.0, 0.0, -0.35), (0.6, 0.6, 0.25)), (0.2, 0.35, 0.85), "box"),
        Part(Cylinder((0.45, -0.45, -0.1), (0.45, -0.45, 0.6), 0.18), (0.2, 0.75, 0.3), "cylinder"),
    ),
    lighting=Lighting(ambient=0.35, diffuse=0.65, direction=(0.4, 0.3, 0.87)),
)
"""A red sphere resting on a blue box with a green cylinder beside it (z up)."""


def look_at_camera_to_world(position: np.ndarray, target: Optional[np.ndarray] = None) -> np.ndarray:
    """OpenGL camera-to-world (4x4; camera looks down −z, +y up, world +z up) at ``position`` looking at
    ``target`` (default: the origin)."""
    R, T = look_at_pytorch3d(
        torch.as_tensor(position, dtype=torch.float64)[None],
        torch.as_tensor(np.zeros(3) if target is None else target, dtype=torch.float64),
        torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
    )
    matrix = np.eye(4)
    matrix[:3] = pytorch3d_to_opengl_pose(R, T)[0].numpy()
    return matrix


def render_view(camera_to_world: np.ndarray, resolution: int, focal: float) -> np.ndarray:
    """Ray-trace the demo object; returns an (H, W, 4) uint8 RGBA image with alpha = mask."""
    centre = resolution / 2.0
    view = render_opengl_view(
        DEMO_OBJECT, camera_to_world[:3], (focal, focal), (centre, centre), (resolution, resolution)
    )
    rgba = np.concatenate([view.rgb, view.coverage[..., None]], -1)
    return (rgba * 255.0 + 0.5).astype(np.uint8)


def make_demo_scene(config: DemoSceneConfig) -> Path:
    """Write the scene and return the path of its ``transforms.json``."""
    own_outputs = ("transforms.json", "images/frame_*.png")
    prepare_output_folder(config.output, config.overwrite, "sf-make-demo-scene --output", own_outputs=own_outputs)
    rng = np.random.default_rng(config.seed)
    images = config.output / "images"
    images.mkdir(parents=True, exist_ok=True)
    focal = config.focal_factor * config.resolution
    frames = []
    for index in range(config.num_views):
        azimuth = 2.0 * np.pi * index / config.num_views
        elevation = rng.uniform(0.15, 0.6)
        position = config.radius * np.array(
            [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
        )
        camera_to_world = look_at_camera_to_world(position)
        name = f"images/frame_{index:03d}.png"
        Image.fromarray(render_view(camera_to_world, config.resolution, focal), mode="RGBA").save(config.output / name)
        frames.append({"file_path": name, "transform_matrix": camera_to_world.tolist()})
    transforms = {
        "camera_model": "OPENCV",
        "fl_x": focal,
        "fl_y": focal,
        "cx": config.resolution / 2.0,
        "cy": config.resolution / 2.0,
        "w": config.resolution,
        "h": config.resolution,
        "frames": frames,
    }
    path = config.output / "transforms.json"
    write_text_atomically(path, json.dumps(transforms, indent=1))  # last: the scene is complete
    return path


def entrypoint() -> None:
    config = tyro.cli(DemoSceneConfig)
    try:
        path = make_demo_scene(config)
    except OSError as error:  # the output folder refused, a full disk
        CONSOLE.print(f"[bold red]Error:[/bold red] {escape(str(error))}", soft_wrap=True, highlight=False)
        raise SystemExit(1) from None
    CONSOLE.print(f"Wrote {config.num_views} views to {path}")


if __name__ == "__main__":
    entrypoint()
