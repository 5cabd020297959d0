"""Write a small synthetic masked-object scene in nerfstudio format (the project's demo data).

The object is analytic, so the scene needs no download: a red sphere resting on a blue box with a
green cylinder beside it, ray-traced with simple Lambertian shading from cameras on a sphere around
the origin. Images are RGBA PNGs whose alpha is the exact foreground mask; ``transforms.json``
stores OpenGL camera-to-world matrices and pinhole intrinsics, as nerfstudio expects.

    sf-make-demo-scene --output demo/scene --num-views 24 --resolution 96
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from PIL import Image
from rich.markup import escape

from nerfstudio.utils.rich_utils import CONSOLE

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


def look_at_camera_to_world(position: np.ndarray, target: np.ndarray = np.zeros(3)) -> np.ndarray:
    """OpenGL camera-to-world (camera looks down −z, +y up) at ``position`` looking at ``target``."""
    forward = target - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2], matrix[:3, 3] = right, up, -forward, position
    return matrix


def _sphere_hits(origins, directions, centre, radius):
    oc = origins - centre
    b = (oc * directions).sum(-1)
    c = (oc * oc).sum(-1) - radius**2
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    t = np.where((disc > 0) & (t > 0), t, np.inf)
    normals = (origins + np.where(np.isfinite(t), t, 0.0)[:, None] * directions - centre) / radius
    return t, normals


def _box_hits(origins, directions, low, high):
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = (low - origins) / directions
        t1 = (high - origins) / directions
    t_near = np.minimum(t0, t1).max(-1)
    t_far = np.maximum(t0, t1).min(-1)
    t = np.where((t_far >= t_near) & (t_near > 0), t_near, np.inf)
    axis = np.minimum(t0, t1).argmax(-1)
    normals = np.zeros_like(origins)
    normals[np.arange(len(origins)), axis] = -np.sign(directions[np.arange(len(origins)), axis])
    return t, normals


def _cylinder_hits(origins, directions, centre_xy, radius, z_low, z_high):
    o, d = origins[:, :2] - centre_xy, directions[:, :2]
    a = (d * d).sum(-1)
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - radius**2
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    z = origins[:, 2] + t * directions[:, 2]
    t = np.where((disc > 0) & (t > 0) & (z >= z_low) & (z <= z_high), t, np.inf)
    normals = np.zeros_like(origins)
    normals[:, :2] = (o + np.where(np.isfinite(t), t, 0.0)[:, None] * d) / radius
    return t, normals


def render_view(camera_to_world: np.ndarray, resolution: int, focal: float) -> np.ndarray:
    """Ray-trace the demo object; returns an (H, W, 4) uint8 RGBA image with alpha = mask."""
    j, i = np.meshgrid(np.arange(resolution) + 0.5, np.arange(resolution) + 0.5, indexing="ij")
    centre = resolution / 2.0
    directions_cam = np.stack([(i - centre) / focal, -(j - centre) / focal, -np.ones_like(i)], -1).reshape(-1, 3)
    directions = directions_cam @ camera_to_world[:3, :3].T
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    origins = np.broadcast_to(camera_to_world[:3, 3], directions.shape)

    shapes = [
        (_sphere_hits(origins, directions, np.array([0.0, 0.0, 0.35]), 0.45), np.array([0.85, 0.2, 0.15])),
        (_box_hits(origins, directions, np.array([-0.6, -0.6, -0.6]), np.array([0.6, 0.6, -0.1])),
         np.array([0.2, 0.35, 0.85])),
        (_cylinder_hits(origins, directions, np.array([0.45, -0.45]), 0.18, -0.1, 0.6), np.array([0.2, 0.75, 0.3])),
    ]
    depth = np.full(len(directions), np.inf)
    colour = np.zeros((len(directions), 3))
    light = np.array([0.4, 0.3, 0.87])
    light /= np.linalg.norm(light)
    for (t, normals), albedo in shapes:
        closer = t < depth
        shading = 0.35 + 0.65 * np.clip((normals * light).sum(-1), 0.0, 1.0)
        colour[closer] = albedo * shading[closer, None]
        depth[closer] = t[closer]
    alpha = np.isfinite(depth).astype(np.float64)
    rgba = np.concatenate([colour * alpha[:, None], alpha[:, None]], -1).reshape(resolution, resolution, 4)
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
