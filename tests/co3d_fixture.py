"""A small synthetic dataset in the CO3Dv2 format, with known geometry and cameras (tests only).

The object is four coloured spheres (a large body and three small "markers", placed
asymmetrically so every view is distinct), lit by a headlight, seen from PyTorch3D NDC cameras on
a tilted orbit whose look-at point and principal point are off-centre. Images are non-square
(96 x 128 by default), anti-aliased by supersampling, on a grey gradient background; masks are
the soft coverage of the object; depths are view-space z. Rendering and the CO3D files are the
product's own (``sparsefusion_ns.synthetic``): this module only chooses the object and orbits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from sparsefusion_ns.cameras.look_at import look_at_pytorch3d
from sparsefusion_ns.data.co3d_annotations import NDC_ISOTROPIC, Co3dFrame, Co3dViewpoint
from sparsefusion_ns.synthetic.co3d_writer import (
    FrameOptions,
    SequenceCapture,
    write_category_annotations,
    write_sequence_frames,
)
from sparsefusion_ns.synthetic.render import render_pytorch3d_view
from sparsefusion_ns.synthetic.shapes import Lighting, Part, ShapeScene, Sphere

HEADLIGHT = Lighting(ambient=0.55, diffuse=0.45, direction=None)
"""Shading from the viewing direction: albedo · (0.55 + 0.45 · facing)."""


@dataclass(frozen=True)
class SphereSpec:
    centre: Tuple[float, float, float]
    """World position of the centre."""
    radius: float
    """Radius in world units."""
    colour: Tuple[float, float, float]
    """Albedo (RGB in [0, 1])."""


def _default_spheres() -> Tuple[SphereSpec, ...]:
    return (
        SphereSpec((0.0, 0.0, 0.0), 1.0, (0.85, 0.75, 0.30)),
        SphereSpec((1.1, 0.45, 0.2), 0.30, (0.90, 0.15, 0.10)),
        SphereSpec((-0.5, 0.95, 0.55), 0.25, (0.10, 0.80, 0.20)),
        SphereSpec((0.25, -0.55, -1.05), 0.35, (0.15, 0.25, 0.95)),
    )


@dataclass(frozen=True)
class FixtureScene:
    """The synthetic object: spheres shaded by a headlight."""

    spheres: Tuple[SphereSpec, ...] = field(default_factory=_default_spheres)
    """The spheres making up the object."""

    @property
    def shapes(self) -> ShapeScene:
        """The object for the product's ray caster."""
        return ShapeScene(tuple(Part(Sphere(s.centre, s.radius), s.colour) for s in self.spheres), HEADLIGHT)

    def cast_rays(self, origins: np.ndarray, directions: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First hit of rays ``origins + t * directions``: (colour (..., 3), hit (...), t (...), inf if none)."""
        shapes = self.shapes
        hits = shapes.cast(origins, directions)
        return shapes.shade(hits, directions), hits.hit, hits.t


def grey_gradient(u: np.ndarray, v: np.ndarray, height: int) -> np.ndarray:
    """The fixture's background: a warm grey getting lighter towards the bottom."""
    return (0.35 + 0.3 * v / height)[..., None] * np.array([1.0, 0.95, 0.9])


@dataclass(frozen=True)
class _Gradient:
    height: int

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return grey_gradient(u, v, self.height)


def render_view(
    scene: FixtureScene, viewpoint: Co3dViewpoint, image_size_hw: Tuple[int, int], supersampling: int = 2
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb (H, W, 3) on the background, coverage (H, W) in [0, 1], view depth (H, W), 0 = none)."""
    viewpoint = viewpoint.to_ndc_isotropic(image_size_hw)
    view = render_pytorch3d_view(
        scene.shapes, viewpoint.R, viewpoint.T, viewpoint.focal_length, viewpoint.principal_point,
        image_size_hw, supersampling, _Gradient(image_size_hw[0]),
    )  # fmt: skip
    return view.rgb, view.coverage, view.depth


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
    azimuths = start + 2.0 * np.pi * np.arange(config.frames_per_sequence) / config.frames_per_sequence
    eyes = radius * np.stack(
        [np.cos(elevation) * np.sin(azimuths), np.full_like(azimuths, np.sin(elevation)),
         np.cos(elevation) * np.cos(azimuths)], axis=-1,
    )  # fmt: skip
    R, T = look_at_pytorch3d(torch.as_tensor(eyes), torch.as_tensor(target), torch.tensor([0.0, 1.0, 0.0]).double())
    return [
        Co3dViewpoint(R=r.numpy(), T=t.numpy(), focal_length=focal, principal_point=principal) for r, t in zip(R, T)
    ]


def write_co3d_fixture(root: Path, config: Co3dFixtureConfig = Co3dFixtureConfig()) -> Co3dFixture:
    """Render and write the synthetic category under ``root``; return what was written."""
    root = Path(root)
    scene = FixtureScene()
    counts = {"train": config.num_train_sequences, "dev": config.num_dev_sequences, "test": config.num_test_sequences}
    roles = [role for role, count in counts.items() for _ in range(count)]
    options = FrameOptions(config.supersampling, config.jpeg_quality, True, config.intrinsics_format)
    sequences: Dict[str, List[str]] = {"train": [], "dev": [], "test": []}
    frames: Dict[str, List[Co3dFrame]] = {}
    for index, role in enumerate(roles):
        name = _sequence_name(index)
        sequences[role].append(name)
        viewpoints = tuple(_orbit(config, np.random.default_rng([config.seed, index])))
        capture = SequenceCapture(
            name, role, scene.shapes, viewpoints, config.image_size_hw, _Gradient(config.image_size_hw[0])
        )
        frames[name] = write_sequence_frames(root, config.category, capture, options)
    role_of = {name: role for role, names in sequences.items() for name in names}
    write_category_annotations(root, config.category, frames, role_of, config.seed)
    return Co3dFixture(root=root, category=config.category, scene=scene, sequences=sequences, frames=frames)
