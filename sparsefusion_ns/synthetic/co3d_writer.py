"""Write ray-cast sequences as a CO3Dv2 category, file for file where CO3Dv2 puts them.

::

    {root}/{category}/frame_annotations.jgz, sequence_annotations.jgz
    {root}/{category}/set_lists/set_lists_fewview_{train,dev,test}.json
    {root}/{category}/{sequence}/images/frame000001.jpg, masks/frame000001.png
                                 [depths/frame000001.jpg.geometric.png, depth_masks/frame000001.png]

Set lists: every file lists the frames of the training sequences under ``train``; the ``test``
split of ``fewview_dev`` (``fewview_test``) holds all frames of the dev (test) sequences; ``val``
is empty. Frame annotations are written in a shuffled order (real files promise no order).

Used by ``sf-make-category`` (the procedural category) and by the tests' CO3D fixture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

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
from sparsefusion_ns.synthetic.render import Background, render_pytorch3d_view
from sparsefusion_ns.synthetic.shapes import ShapeScene

ROLES = ("train", "dev", "test")
"""What a sequence is for: listed under ``train`` of every set list, or the ``test`` split of
``set_lists_fewview_dev.json`` / ``set_lists_fewview_test.json``."""


@dataclass(frozen=True)
class GradientBackground:
    """A vertical colour gradient behind the object (a picklable :data:`~.render.Background`)."""

    top: Tuple[float, float, float]
    """Colour at the top edge."""
    bottom: Tuple[float, float, float]
    """Colour at the bottom edge."""
    height: int
    """Image height in pixels."""

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        weight = np.clip(v / self.height, 0.0, 1.0)[..., None]
        return (1.0 - weight) * np.asarray(self.top) + weight * np.asarray(self.bottom)


@dataclass(frozen=True)
class FrameOptions:
    """How frames are rendered and stored."""

    supersampling: int = 2
    """Samples per pixel along each axis (anti-aliasing; soft mask edges)."""
    jpeg_quality: int = 95
    """Quality of the written JPEG images."""
    write_depth: bool = False
    """Also write CO3D depth maps and depth masks (view-space z)."""
    intrinsics_format: str = NDC_ISOTROPIC
    """Format the intrinsics are stored in (``ndc_isotropic`` as CO3Dv2, or ``ndc_norm_image_bounds``)."""


@dataclass(frozen=True)
class SequenceCapture:
    """One object filmed by a list of cameras."""

    name: str
    """Sequence name (a folder under the category)."""
    role: str
    """One of :data:`ROLES`."""
    scene: ShapeScene
    """The object."""
    viewpoints: Tuple[Co3dViewpoint, ...]
    """One isotropic-NDC PyTorch3D camera per frame, in frame order."""
    image_size_hw: Tuple[int, int]
    """(H, W) of every frame."""
    background: Optional[Background] = None
    """Behind the object; None: black."""


def stored_viewpoint(viewpoint: Co3dViewpoint, image_size_hw: Tuple[int, int], intrinsics_format: str) -> Co3dViewpoint:
    """``viewpoint`` (isotropic NDC) with its intrinsics in ``intrinsics_format``."""
    if intrinsics_format == NDC_ISOTROPIC:
        return viewpoint
    if intrinsics_format != NDC_NORM_IMAGE_BOUNDS:
        raise ValueError(f"Unknown intrinsics_format {intrinsics_format!r}.")
    height, width = image_size_hw
    ratio = min(height, width) / np.array([width, height], dtype=np.float64)  # inverse of to_ndc_isotropic
    return Co3dViewpoint(
        R=viewpoint.R,
        T=viewpoint.T,
        focal_length=viewpoint.focal_length * ratio,
        principal_point=viewpoint.principal_point * ratio,
        intrinsics_format=NDC_NORM_IMAGE_BOUNDS,
    )


def write_sequence_frames(
    root: Path, category: str, capture: SequenceCapture, options: FrameOptions
) -> List[Co3dFrame]:
    """Render every frame of ``capture`` into ``{root}/{category}/{name}/`` and return its annotations."""
    root = Path(root)
    folder = root / category / capture.name
    kinds = ("images", "masks") + (("depths", "depth_masks") if options.write_depth else ())
    for kind in kinds:
        (folder / kind).mkdir(parents=True, exist_ok=True)
    frames = []
    for number, viewpoint in enumerate(capture.viewpoints):
        view = render_pytorch3d_view(
            capture.scene,
            viewpoint.R,
            viewpoint.T,
            viewpoint.focal_length,
            viewpoint.principal_point,
            capture.image_size_hw,
            options.supersampling,
            capture.background,
        )
        stem = f"frame{number + 1:06d}"
        paths = {"image": folder / "images" / f"{stem}.jpg", "mask": folder / "masks" / f"{stem}.png"}
        Image.fromarray(np.round(view.rgb * 255).astype(np.uint8)).save(paths["image"], quality=options.jpeg_quality)
        mask_u8 = np.round(view.coverage * 255).astype(np.uint8)
        Image.fromarray(mask_u8).save(paths["mask"])
        if options.write_depth:
            paths["depth"] = folder / "depths" / f"{stem}.jpg.geometric.png"
            paths["depth_mask"] = folder / "depth_masks" / f"{stem}.png"
            # CO3D depth PNGs hold the bits of float16 depths in 16-bit pixels.
            Image.fromarray(view.depth.astype(np.float16).view(np.uint16)).save(paths["depth"])
            Image.fromarray(((view.coverage > 0) * 255).astype(np.uint8)).save(paths["depth_mask"])
        relative = {key: path.relative_to(root).as_posix() for key, path in paths.items()}
        frames.append(
            Co3dFrame(
                sequence_name=capture.name,
                frame_number=number,
                frame_timestamp=number / 10.0,
                image_path=relative["image"],
                image_size_hw=tuple(capture.image_size_hw),
                viewpoint=stored_viewpoint(viewpoint, capture.image_size_hw, options.intrinsics_format),
                mask_path=relative["mask"],
                mask_mass=float(mask_u8.sum() / 255.0),
                depth_path=relative.get("depth"),
                depth_scale_adjustment=1.0,
                depth_mask_path=relative.get("depth_mask"),
                meta={"frame_type": "synthetic"},
            )
        )
    return frames


def write_category_annotations(
    root: Path,
    category: str,
    frames: Mapping[str, Sequence[Co3dFrame]],
    roles: Mapping[str, str],
    seed: int,
) -> Dict[str, Path]:
    """Write the annotation files and set lists of ``category`` for sequences already rendered.

    ``frames`` maps each sequence name to its frames (in frame order), ``roles`` maps it to one of
    :data:`ROLES`; ``seed`` shuffles the order of the frame annotations. Returns the files written.
    """
    folder = Path(root) / category
    unknown = sorted({role for role in roles.values()} - set(ROLES))
    if unknown:
        raise ValueError(f"unknown sequence roles {unknown}; expected {ROLES}")
    by_role: Dict[str, List[str]] = {role: [n for n in frames if roles[n] == role] for role in ROLES}
    written = {
        "sequence_annotations": folder / "sequence_annotations.jgz",
        "frame_annotations": folder / "frame_annotations.jgz",
    }
    write_jgz(written["sequence_annotations"], [Co3dSequence(n, category, 1.0).to_json() for n in frames])
    all_frames = [frame for sequence in frames.values() for frame in sequence]
    order = np.random.default_rng(seed).permutation(len(all_frames))
    write_jgz(written["frame_annotations"], [all_frames[i].to_json() for i in order])

    def listed(names: List[str]) -> List[list]:
        return [[f.sequence_name, f.frame_number, f.image_path] for n in names for f in frames[n]]

    (folder / "set_lists").mkdir(parents=True, exist_ok=True)
    train = listed(by_role["train"])
    for subset, held_out in (("fewview_train", []), ("fewview_dev", by_role["dev"]), ("fewview_test", by_role["test"])):
        path = folder / "set_lists" / f"set_lists_{subset}.json"
        path.write_text(json.dumps({"train": train, "val": [], "test": listed(held_out)}))
        written[f"set_lists_{subset}"] = path
    return written
