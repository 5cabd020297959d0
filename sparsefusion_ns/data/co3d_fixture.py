"""Write a small synthetic dataset in the CO3Dv2 format, with known geometry and cameras.

The object is a few coloured spheres (a large body and three small "markers", placed
asymmetrically so every view is distinct), ray-cast with numpy from PyTorch3D NDC cameras on a
tilted orbit whose look-at point and principal point are off-centre. Images are non-square
(96 x 128 by default), anti-aliased by supersampling, on a grey gradient background; masks are
the soft coverage of the object; depths are view-space z. Everything is written where CO3Dv2
puts it (see ``co3d_annotations``)::

    {root}/{category}/frame_annotations.jgz, sequence_annotations.jgz
    {root}/{category}/set_lists/set_lists_fewview_{train,dev,test}.json
    {root}/{category}/{sequence}/images/frame000001.jpg, masks/frame000001.png,
                                 depths/frame000001.jpg.geometric.png, depth_masks/frame000001.png

Set lists: every file lists the frames of the training sequences under ``train``; the ``test``
split of ``fewview_dev`` (``fewview_test``) holds all frames of the dev (test) sequences; ``val``
is empty. The frame annotations are written in a shuffled order, as real files do not promise
any order.

Used by the CO3D tests and by tests that need a posed, masked multi-view object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from sparsefusion_ns.data.co3d_annotations import (
    NDC_ISOTROPIC,
    NDC_NORM_IMAGE_BOUNDS,
    Co3dFrame,
    Co3dSequence,
    Co3dViewpoint,
    write_jgz,
)


@dataclass(frozen=True)
class Sphere:
    centre: Tuple[float, float, float]
    """World position of the centre."""
    radius: float
    """Radius in world units."""
    colour: Tuple[float, float, float]
    """Albedo (RGB in [0, 1])."""


def _default_spheres() -> Tuple[Sphere, ...]:
    return (
        Sphere((0.0, 0.0, 0.0), 1.0, (0.85, 0.75, 0.30)),
        Sphere((1.1, 0.45, 0.2), 0.30, (0.90, 0.15, 0.10)),
        Sphere((-0.5, 0.95, 0.55), 0.25, (0.10, 0.80, 0.20)),
        Sphere((0.25, -0.55, -1.05), 0.35, (0.15, 0.25, 0.95)),
    )


@dataclass(frozen=True)
class FixtureScene:
    """The synthetic object: spheres with Lambertian-looking shading from the viewing direction."""

    spheres: Tuple[Sphere, ...] = field(default_factory=_default_spheres)
    """The spheres making up the object."""

    def cast_rays(self, origins: np.ndarray, directions: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First hit of rays ``origins + t * directions`` (t > 0; directions need not be unit).

        Returns (colour (..., 3), hit (...) bool, t (...); t = inf where nothing is hit).
        """
        origins = np.asarray(origins, np.float64)
        directions = np.asarray(directions, np.float64)
        shape = np.broadcast_shapes(origins.shape, directions.shape)[:-1]
        t_best = np.full(shape, np.inf)
        nearest = np.full(shape, -1)  # index of the sphere hit first
        a = np.einsum("...i,...i->...", directions, directions)
        for index, sphere in enumerate(self.spheres):
            offset = origins - np.asarray(sphere.centre)
            b = np.einsum("...i,...i->...", directions, offset)
            c = np.einsum("...i,...i->...", offset, offset) - sphere.radius**2
            discriminant = b * b - a * c
            with np.errstate(invalid="ignore"):
                t = (-b - np.sqrt(discriminant)) / a  # nearer root of a t^2 + 2 b t + c = 0
            closer = (discriminant >= 0) & (t > 0) & (t < t_best)
            t_best = np.where(closer, t, t_best)
            nearest = np.where(closer, index, nearest)
        hit = nearest >= 0
        centres = np.array([s.centre for s in self.spheres])[nearest]
        radii = np.array([s.radius for s in self.spheres])[nearest]
        albedo = np.array([s.colour for s in self.spheres])[nearest]
        points = origins + np.where(hit, t_best, 0.0)[..., None] * directions
        normal = (points - centres) / radii[..., None]
        facing = np.clip(-np.einsum("...i,...i->...", normal, directions) / np.sqrt(a), 0.0, 1.0)
        colour = np.where(hit[..., None], albedo * (0.55 + 0.45 * facing)[..., None], 0.0)
        return colour, hit, t_best


def render_view(
    scene: FixtureScene, viewpoint: Co3dViewpoint, image_size_hw: Tuple[int, int], supersampling: int = 2
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render (rgb (H, W, 3) on the background, coverage (H, W) in [0, 1], view depth (H, W), 0 = none)."""
    viewpoint = viewpoint.to_ndc_isotropic(image_size_hw)
    height, width = image_size_hw
    half_s = min(height, width) / 2.0
    k = supersampling
    # Sub-pixel sample positions (pixel (i, j) spans [j, j+1) x [i, i+1)).
    u = (np.arange(width * k) + 0.5) / k
    v = (np.arange(height * k) + 0.5) / k
    uu, vv = np.meshgrid(u, v)
    x_ndc, y_ndc = (width / 2.0 - uu) / half_s, (height / 2.0 - vv) / half_s  # +x left, +y up
    fx, fy = viewpoint.focal_length
    px, py = viewpoint.principal_point
    d_view = np.stack([(x_ndc - px) / fx, (y_ndc - py) / fy, np.ones_like(x_ndc)], axis=-1)  # view z = 1
    d_world = d_view @ viewpoint.R.T  # X_world = (X_view - T) R^T, so directions map by R^T (row form)
    centre = -viewpoint.R @ viewpoint.T
    colour, hit, t = scene.cast_rays(centre, d_world)
    background = (0.35 + 0.3 * vv / height)[..., None] * np.array([1.0, 0.95, 0.9])
    rgb = np.where(hit[..., None], colour, background)
    depth = np.where(hit, t, 0.0)  # t along a direction with view z = 1 is the view depth

    def pool(array: np.ndarray) -> np.ndarray:
        return array.reshape(height, k, width, k, *array.shape[2:]).mean(axis=(1, 3))

    coverage = pool(hit.astype(np.float64))
    depth_sum = pool(depth)
    mean_depth = np.where(coverage > 0, depth_sum / np.maximum(coverage, 1e-12), 0.0)
    return pool(rgb), coverage, mean_depth


def look_at_viewpoint(
    eye: np.ndarray, target: np.ndarray, focal_length: np.ndarray, principal_point: np.ndarray, up=(0.0, 1.0, 0.0)
) -> Co3dViewpoint:
    """PyTorch3D camera at ``eye`` looking at ``target``: view z forward, x = up x z (left), y = z x x."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(np.asarray(up, np.float64), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], axis=1)  # columns are the camera axes in world coordinates
    T = -eye @ R  # X_view(eye) = eye @ R + T = 0
    return Co3dViewpoint(R=R, T=T, focal_length=focal_length, principal_point=principal_point)


@dataclass(frozen=True)
class Co3dFixtureConfig:
    category: str = "synthetic"
    """Category folder name."""
    num_train_sequences: int = 1
    """Sequences listed under ``train`` in every set list."""
    num_dev_sequences: int = 2
    """Sequences in the ``test`` split of ``set_lists_fewview_dev.json``."""
    num_test_sequences: int = 1
    """Sequences in the ``test`` split of ``set_lists_fewview_test.json``."""
    frames_per_sequence: int = 16
    """Frames per sequence, evenly spread over one orbit."""
    image_size_hw: Tuple[int, int] = (96, 128)
    """(H, W) of every image; non-square on purpose."""
    intrinsics_format: str = NDC_ISOTROPIC
    """Format the intrinsics are written in (``ndc_isotropic`` as CO3Dv2, or ``ndc_norm_image_bounds``)."""
    supersampling: int = 2
    """Samples per pixel along each axis (anti-aliasing; soft mask edges)."""
    jpeg_quality: int = 95
    """Quality of the written JPEG images."""
    seed: int = 0
    """Seed of the per-sequence orbit parameters and of the annotation order."""


@dataclass
class Co3dFixture:
    """What was written: the root, the object, and the annotations (cameras included)."""

    root: Path
    """Dataset root (holds the category folder)."""
    category: str
    """Category folder name."""
    scene: FixtureScene
    """The object every sequence shows."""
    sequences: Dict[str, List[str]]
    """Sequence names per role: ``train``, ``dev``, ``test``."""
    frames: Dict[str, List[Co3dFrame]]
    """Frame annotations per sequence, ordered by frame number."""


def _sequence_name(index: int) -> str:
    return f"{100 + index}_{1000 * (index + 1) + 7}_{20000 + 37 * index}"


def _orbit(config: Co3dFixtureConfig, rng: np.random.Generator) -> List[Co3dViewpoint]:
    radius = rng.uniform(5.5, 6.5)
    elevation = np.deg2rad(rng.uniform(12.0, 30.0))
    start = rng.uniform(0.0, 2.0 * np.pi)
    target = rng.uniform(-0.3, 0.3, size=3)  # look-at point off the object's centre
    focal = np.full(2, rng.uniform(2.6, 3.0))  # isotropic NDC: same for x and y
    principal = rng.uniform(-0.08, 0.08, size=2)
    viewpoints = []
    for i in range(config.frames_per_sequence):
        azimuth = start + 2.0 * np.pi * i / config.frames_per_sequence
        direction = [np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth)]
        eye = radius * np.array(direction)
        viewpoints.append(look_at_viewpoint(eye, target, focal, principal))
    return viewpoints


def _stored_viewpoint(viewpoint: Co3dViewpoint, config: Co3dFixtureConfig) -> Co3dViewpoint:
    if config.intrinsics_format == NDC_ISOTROPIC:
        return viewpoint
    if config.intrinsics_format != NDC_NORM_IMAGE_BOUNDS:
        raise ValueError(f"Unknown intrinsics_format {config.intrinsics_format!r}.")
    height, width = config.image_size_hw
    ratio = min(height, width) / np.array([width, height], dtype=np.float64)  # inverse of to_ndc_isotropic
    return Co3dViewpoint(
        R=viewpoint.R,
        T=viewpoint.T,
        focal_length=viewpoint.focal_length * ratio,
        principal_point=viewpoint.principal_point * ratio,
        intrinsics_format=NDC_NORM_IMAGE_BOUNDS,
    )


def write_co3d_fixture(root: Path, config: Co3dFixtureConfig = Co3dFixtureConfig()) -> Co3dFixture:
    """Render and write the synthetic category under ``root``; return what was written."""
    root = Path(root)
    folder = root / config.category
    scene = FixtureScene()
    counts = {"train": config.num_train_sequences, "dev": config.num_dev_sequences, "test": config.num_test_sequences}
    roles = [role for role, count in counts.items() for _ in range(count)]
    sequences: Dict[str, List[str]] = {"train": [], "dev": [], "test": []}
    frames: Dict[str, List[Co3dFrame]] = {}
    for index, role in enumerate(roles):
        name = _sequence_name(index)
        sequences[role].append(name)
        rng = np.random.default_rng([config.seed, index])
        frames[name] = []
        for number, viewpoint in enumerate(_orbit(config, rng)):
            frames[name].append(_write_frame(root, folder, name, number, viewpoint, scene, config))

    sequence_records = [Co3dSequence(name, config.category, 1.0).to_json() for name in frames]
    write_jgz(folder / "sequence_annotations.jgz", sequence_records)
    all_frames = [frame for sequence in frames.values() for frame in sequence]
    order = np.random.default_rng(config.seed).permutation(len(all_frames))
    write_jgz(folder / "frame_annotations.jgz", [all_frames[i].to_json() for i in order])

    def listed(names: List[str]) -> List[list]:
        return [[f.sequence_name, f.frame_number, f.image_path] for n in names for f in frames[n]]

    (folder / "set_lists").mkdir(parents=True, exist_ok=True)
    held_out_by_subset = {"fewview_train": [], "fewview_dev": sequences["dev"], "fewview_test": sequences["test"]}
    for subset, held_out in held_out_by_subset.items():
        content = {"train": listed(sequences["train"]), "val": [], "test": listed(held_out)}
        (folder / "set_lists" / f"set_lists_{subset}.json").write_text(json.dumps(content))
    return Co3dFixture(root=root, category=config.category, scene=scene, sequences=sequences, frames=frames)


def _write_frame(
    root: Path,
    folder: Path,
    sequence: str,
    number: int,
    viewpoint: Co3dViewpoint,
    scene: FixtureScene,
    config: Co3dFixtureConfig,
) -> Co3dFrame:
    rgb, coverage, depth = render_view(scene, viewpoint, config.image_size_hw, config.supersampling)
    stem = f"frame{number + 1:06d}"
    paths = {
        "image": folder / sequence / "images" / f"{stem}.jpg",
        "mask": folder / sequence / "masks" / f"{stem}.png",
        "depth": folder / sequence / "depths" / f"{stem}.jpg.geometric.png",
        "depth_mask": folder / sequence / "depth_masks" / f"{stem}.png",
    }
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(paths["image"], quality=config.jpeg_quality)
    mask_u8 = np.round(coverage * 255).astype(np.uint8)
    Image.fromarray(mask_u8).save(paths["mask"])
    # CO3D depth PNGs hold the bits of float16 depths in 16-bit pixels.
    Image.fromarray(depth.astype(np.float16).view(np.uint16)).save(paths["depth"])
    Image.fromarray(((coverage > 0) * 255).astype(np.uint8)).save(paths["depth_mask"])
    relative = {key: path.relative_to(root).as_posix() for key, path in paths.items()}
    return Co3dFrame(
        sequence_name=sequence,
        frame_number=number,
        frame_timestamp=number / 10.0,
        image_path=relative["image"],
        image_size_hw=tuple(config.image_size_hw),
        viewpoint=_stored_viewpoint(viewpoint, config),
        mask_path=relative["mask"],
        mask_mass=float(mask_u8.sum() / 255.0),
        depth_path=relative["depth"],
        depth_scale_adjustment=1.0,
        depth_mask_path=relative["depth_mask"],
        meta={"frame_type": "synthetic"},
    )
