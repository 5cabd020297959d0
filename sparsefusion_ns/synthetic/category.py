"""A procedural object category ("critters"), filmed like CO3Dv2, for training and testing teachers.

Why this category: SparseFusion's teacher is a *category prior*. From two views of an object, a
plain NeRF cannot know what the unseen side looks like; a model that has seen many objects of the
category can. So every instance shares a layout whose sides differ, while shapes, proportions,
patterns and palettes vary per instance:

- a **body** (ellipsoid) with stripes or spots, standing on four **legs** (cylinders);
- a **head** at the front (+z of the object) with a lighter **muzzle**, two dark **eyes**, a
  **nose** and two **ears**: the face is seen only from the front;
- a **tail** with a tuft at the back, rising to one side;
- a **saddle bag** (box) on the object's right flank only, in its own colour.

Instances are lit by one directional light (ambient 0.35 + Lambertian 0.65), so the images show
the geometry. Object frame: +y up, +z front, feet on y = 0; each instance is then turned about y
and moved off the world origin.

Capture, as CO3D: one orbit per sequence around the object with varying elevation, distance and
azimuth steps, the look-at point jittered, a little camera roll, non-square images (landscape or
portrait per sequence), an off-centre principal point and small per-frame focal changes. Masks
come from the renderer (pixel coverage).

Deterministic: instance ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` alone, so a
sequence does not depend on how many others are generated or on the number of workers.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch

from sparsefusion_ns.cameras.look_at import look_at_pytorch3d
from sparsefusion_ns.data.co3d_annotations import Co3dViewpoint
from sparsefusion_ns.synthetic.co3d_writer import GradientBackground, SequenceCapture
from sparsefusion_ns.synthetic.shapes import (
    Box,
    Cylinder,
    Ellipsoid,
    Lighting,
    Part,
    Pattern,
    ShapeScene,
    Sphere,
    bounding_sphere,
)

GENERATOR_VERSION = 1
"""Bumped whenever the same seed would give different images (recorded in provenance)."""


@dataclass(frozen=True)
class CaptureConfig:
    """How each sequence is filmed (ranges are drawn uniformly per sequence unless said otherwise)."""

    landscape_size_hw: Tuple[int, int] = (96, 128)
    """(H, W) of landscape sequences; portrait sequences use (W, H)."""
    portrait_probability: float = 0.3
    """Share of sequences filmed in portrait orientation."""
    distance: Tuple[float, float] = (4.5, 6.0)
    """Mean distance of the cameras from the object's centre."""
    distance_wobble: float = 0.08
    """Relative per-sequence amplitude of the distance's slow variation along the orbit."""
    elevation_deg: Tuple[float, float] = (8.0, 40.0)
    """Mean elevation of the orbit above the object's centre, degrees."""
    elevation_wobble_deg: float = 10.0
    """Amplitude of the elevation's variation along the orbit, degrees."""
    azimuth_jitter: float = 0.35
    """Per-frame jitter of the azimuth steps, as a fraction of the mean step."""
    look_at_jitter: float = 0.15
    """Per-frame jitter of the look-at point around the object's centre, world units."""
    roll_deg: float = 3.0
    """Per-frame camera roll jitter, degrees."""
    focal_ndc: Tuple[float, float] = (2.4, 3.0)
    """Focal length in isotropic NDC units (shorter image side = 2)."""
    focal_jitter: float = 0.02
    """Relative per-frame focal change (zoom breathing)."""
    principal_point_ndc: float = 0.06
    """Per-sequence principal point offset, NDC units, in each axis."""
    world_offset: float = 0.6
    """The object's centre is moved up to this far from the world origin in each axis."""


def _hsv(hue: float, saturation: float, value: float) -> Tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(hue % 1.0, saturation, value))


def _yaw(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def make_instance(rng: np.random.Generator, world_offset: float = 0.6) -> Tuple[ShapeScene, np.ndarray]:
    """One critter in world coordinates (centred up to ``world_offset`` from the origin in each axis)
    and its centre (the bounding sphere's)."""
    # Palette: the body's hue, an accent hue for its pattern, a distinct hue for the bag.
    hue = rng.uniform()
    base = _hsv(hue, rng.uniform(0.35, 0.8), rng.uniform(0.6, 0.95))
    accent = _hsv(hue + rng.choice([0.5, 0.33, -0.33]) + rng.uniform(-0.05, 0.05), rng.uniform(0.5, 0.9),
                  rng.uniform(0.3, 0.9))  # fmt: skip
    head_colour = _hsv(hue + rng.uniform(-0.04, 0.04), rng.uniform(0.2, 0.6), rng.uniform(0.75, 1.0))
    leg_colour = _hsv(hue, rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.5))
    bag_colour = _hsv(hue + rng.uniform(0.2, 0.8), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    tail_colour = accent if rng.uniform() < 0.5 else leg_colour

    # Shape: body semi-axes, legs, head.
    rx, ry, rz = rng.uniform(0.5, 0.75), rng.uniform(0.42, 0.62), rng.uniform(0.8, 1.15)
    leg_length, leg_radius = rng.uniform(0.3, 0.7), rng.uniform(0.09, 0.15)
    body_y = leg_length + 0.7 * ry
    head_radius = rng.uniform(0.33, 0.52)
    head = np.array([0.0, body_y + 0.55 * ry + 0.25 * head_radius, rz * 0.85 + 0.55 * head_radius])
    pattern = Pattern(
        kind="stripes" if rng.uniform() < 0.5 else "spots",
        base=base,
        accent=accent,
        frequency=rng.uniform(5.0, 9.0),
        axis=2,
        phase=rng.uniform(0.0, 2.0 * math.pi),
    )

    parts: List[Tuple[object, object, str]] = [
        (Ellipsoid((0.0, body_y, 0.0), (rx, ry, rz)), pattern, "body"),
        (Sphere(tuple(head), head_radius), head_colour, "head"),
    ]
    for sx in (-1.0, 1.0):
        for sz in (-1.0, 1.0):
            foot = (sx * 0.55 * rx, 0.0, sz * 0.6 * rz)
            parts.append((Cylinder(foot, (foot[0], body_y, foot[2]), leg_radius), leg_colour, "leg"))
    # Face: muzzle, eyes and nose on the front of the head; ears on top.
    muzzle = head + np.array([0.0, -0.25, 0.75]) * head_radius
    parts.append((Ellipsoid(tuple(muzzle), (0.55 * head_radius, 0.4 * head_radius, 0.4 * head_radius)),
                  _hsv(0.1, 0.1, 0.97), "muzzle"))  # fmt: skip
    eye_spread, eye_size = rng.uniform(0.3, 0.45), rng.uniform(0.12, 0.18)
    for sx in (-1.0, 1.0):
        eye = head + np.array([sx * eye_spread, 0.3, 0.85]) * head_radius
        parts.append((Sphere(tuple(eye), eye_size * head_radius * 1.4), (0.05, 0.05, 0.07), "eye"))
    nose = muzzle + np.array([0.0, 0.08, 0.4]) * head_radius
    parts.append((Sphere(tuple(nose), 0.16 * head_radius), _hsv(rng.uniform(0.93, 1.02), 0.7, 0.85), "nose"))
    ear_size = rng.uniform(0.25, 0.45) * head_radius
    for sx in (-1.0, 1.0):
        ear = head + np.array([sx * 0.55, 0.8, -0.1]) * head_radius
        parts.append((Ellipsoid(tuple(ear), (ear_size * 0.6, ear_size * 1.2, ear_size * 0.35)), leg_colour, "ear"))
    # Tail: from the back, rising and leaning to the left, with a tuft.
    tail_length = rng.uniform(0.5, 1.0)
    tail_start = np.array([0.0, body_y + 0.2 * ry, -0.9 * rz])
    tail_direction = np.array([rng.uniform(-0.5, -0.1), rng.uniform(0.6, 1.1), -0.7])
    tail_end = tail_start + tail_length * tail_direction / np.linalg.norm(tail_direction)
    parts.append((Cylinder(tuple(tail_start), tuple(tail_end), rng.uniform(0.06, 0.1)), tail_colour, "tail"))
    parts.append((Sphere(tuple(tail_end), rng.uniform(0.12, 0.2)), accent, "tail_tuft"))
    # Saddle bag: on the right flank (-x; the object's front is +z, its right hand -x) only.
    bag_height = rng.uniform(0.3, 0.5) * ry * 2
    parts.append((Box((-(rx * 0.92), body_y - 0.1 * ry, rng.uniform(-0.3, 0.1) * rz),
                      (0.12, bag_height / 2, rng.uniform(0.3, 0.45) * rz)), bag_colour, "bag"))  # fmt: skip

    # Place the object in the world: turn it about y, move it off the origin.
    rotation = _yaw(rng.uniform(0.0, 2.0 * math.pi))
    local_centre, _ = bounding_sphere([Part(p, (0.0, 0.0, 0.0)) for p, _, _ in parts])
    offset = rng.uniform(-world_offset, world_offset, size=3) - rotation @ np.asarray(local_centre)
    placed = [Part(_moved(primitive, rotation, offset), colour, name) for primitive, colour, name in parts]
    centre, radius = bounding_sphere(placed)
    lighting = Lighting(ambient=0.35, diffuse=0.65, direction=tuple(_yaw(rng.uniform(-0.6, 0.6)) @ [0.3, 0.85, 0.45]))
    return ShapeScene(parts=tuple(placed), lighting=lighting, bound_centre=centre, bound_radius=radius), np.asarray(
        centre
    )


def _moved(primitive, rotation: np.ndarray, offset: np.ndarray):
    """``primitive`` after ``x ↦ rotation x + offset``."""
    if isinstance(primitive, Cylinder):
        start = rotation @ np.asarray(primitive.start) + offset
        end = rotation @ np.asarray(primitive.end) + offset
        return Cylinder(tuple(start), tuple(end), primitive.radius)
    own = np.eye(3) if primitive.rotation is None else primitive.rotation
    centre = tuple(rotation @ np.asarray(primitive.centre) + offset)
    if isinstance(primitive, Ellipsoid):
        return Ellipsoid(centre, primitive.radii, rotation @ own)
    return Box(centre, primitive.half_extents, rotation @ own)


def make_capture(
    rng: np.random.Generator, centre: np.ndarray, num_frames: int, config: CaptureConfig
) -> Tuple[Tuple[Co3dViewpoint, ...], Tuple[int, int]]:
    """The cameras of one orbit around ``centre`` (isotropic NDC PyTorch3D cameras) and the image size."""
    height, width = config.landscape_size_hw
    size_hw = (width, height) if rng.uniform() < config.portrait_probability else (height, width)
    distance = rng.uniform(*config.distance)
    elevation = math.radians(rng.uniform(*config.elevation_deg))
    start, direction = rng.uniform(0.0, 2.0 * math.pi), rng.choice([-1.0, 1.0])
    focal = rng.uniform(*config.focal_ndc)
    principal = rng.uniform(-config.principal_point_ndc, config.principal_point_ndc, size=2)
    phase_e, phase_d = rng.uniform(0.0, 2.0 * math.pi, size=2)

    steps = 1.0 + config.azimuth_jitter * rng.uniform(-1.0, 1.0, size=num_frames)
    azimuths = start + direction * 2.0 * math.pi * (np.cumsum(steps) - steps[0]) / steps.sum()
    progress = np.arange(num_frames) / num_frames * 2.0 * math.pi
    elevations = elevation + math.radians(config.elevation_wobble_deg) * np.sin(progress + phase_e)
    distances = distance * (1.0 + config.distance_wobble * np.sin(2.0 * progress + phase_d))
    eyes = centre + distances[:, None] * np.stack(
        [np.cos(elevations) * np.sin(azimuths), np.sin(elevations), np.cos(elevations) * np.cos(azimuths)], axis=-1
    )
    targets = centre + rng.uniform(-config.look_at_jitter, config.look_at_jitter, size=(num_frames, 3))
    rolls = np.radians(rng.uniform(-config.roll_deg, config.roll_deg, size=num_frames))
    R, T = [], []
    for eye, target, roll in zip(eyes, targets, rolls):
        forward = (target - eye) / np.linalg.norm(target - eye)
        up = _rotate_about(np.array([0.0, 1.0, 0.0]), forward, roll)
        rotation, translation = look_at_pytorch3d(
            torch.as_tensor(eye[None]), torch.as_tensor(target), torch.as_tensor(up)
        )
        R.append(rotation[0].numpy())
        T.append(translation[0].numpy())
    focals = focal * (1.0 + config.focal_jitter * rng.uniform(-1.0, 1.0, size=num_frames))
    viewpoints = tuple(
        Co3dViewpoint(R=R[i], T=T[i], focal_length=np.full(2, focals[i]), principal_point=principal.copy())
        for i in range(num_frames)
    )
    return viewpoints, size_hw


def _rotate_about(vector: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation of ``vector`` about the unit ``axis``."""
    return (
        vector * math.cos(angle)
        + np.cross(axis, vector) * math.sin(angle)
        + axis * (axis @ vector) * (1.0 - math.cos(angle))
    )


def make_sequence(
    seed: int, index: int, name: str, role: str, num_frames: int, config: CaptureConfig
) -> SequenceCapture:
    """Instance ``index`` of the category for ``seed`` and its capture (deterministic)."""
    rng = np.random.default_rng([seed, index])
    scene, centre = make_instance(rng, config.world_offset)
    viewpoints, size_hw = make_capture(rng, centre, num_frames, config)
    grey = rng.uniform(0.25, 0.7)
    tint = rng.uniform(-0.06, 0.06, size=3)
    background = GradientBackground(
        top=tuple(float(c) for c in np.clip(grey + tint + 0.1, 0, 1)),
        bottom=tuple(float(c) for c in np.clip(grey + tint - 0.1, 0, 1)),
        height=size_hw[0],
    )
    return SequenceCapture(name, role, scene, viewpoints, size_hw, background)
