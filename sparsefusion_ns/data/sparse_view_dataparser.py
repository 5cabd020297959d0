"""Sparse-view scenes from nerfstudio ``transforms.json`` files and Blender scenes.

The ``train`` split holds the 2–6 input views; ``val`` and ``test`` hold every other frame (the
held-out views used for evaluation). Poses stay in the scene's own world frame (OpenGL
camera-to-world, as nerfstudio and Blender store them), optionally scaled by ``scale_factor``;
no automatic re-centring, so the paper's [-4, 4]^3 box is meaningful in the units of the data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
from PIL import Image

from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.data.camera_checks import check_cameras
from sparsefusion_ns.data.view_selection import held_out_views, select_input_views


class SceneFormatError(ValueError):
    """The scene files cannot be read as a sparse-view scene."""


@dataclass
class SparseViewsDataParserConfig(DataParserConfig):
    """A nerfstudio or Blender scene of masked object photos, of which a few are input views."""

    _target: Type = field(default_factory=lambda: SparseViewsDataParser)
    data: Path = Path("data/lego")
    """Scene folder (with ``transforms.json``, or Blender's ``transforms_train.json``) or the JSON file."""
    input_views: Tuple[int, ...] = ()
    """Indices (into the scene's frame list) of the input views. Empty: draw ``num_input_views``."""
    num_input_views: int = 3
    """Number of input views drawn with a seeded permutation when ``input_views`` is empty."""
    selection_seed: int = 0
    """Seed of the permutation that draws the input views."""
    allow_more_views: bool = False
    """Accept more than six input views (beyond the paper's sparse setting)."""
    scale_factor: float = 1.0
    """Multiply camera positions by this factor (the field lives in a [-half_extent, half_extent]^3 box)."""
    orient_to_first_input: bool = True
    """Rotate the world about its origin so the first input camera has identity rotation in
    PyTorch3D convention (looking down +z with +y up), the frame the authors' field lives in. The
    rotation is stored as the dataparser transform."""
    scene_half_extent: float = 4.0
    """Half side of the axis-aligned scene box; SparseFusion's field covers [-4, 4]^3."""
    require_masks: bool = True
    """Refuse scenes without foreground masks (alpha channel or per-frame ``mask_path``)."""
    camera_check: Literal["warn", "error", "off"] = "warn"
    """What to do when the poses or intrinsics look wrong (see ``camera_checks.py``)."""


@dataclass
class _Frame:
    image: Path
    mask: Optional[Path]
    camera_to_world: np.ndarray
    intrinsics: Tuple[float, float, float, float, int, int]  # fx, fy, cx, cy, width, height


def _find_transforms(data: Path) -> Path:
    if data.is_file():
        return data
    if not data.exists():
        raise SceneFormatError(
            f"The scene folder {data} (--data) does not exist. Check the path; it should be a folder holding "
            "transforms.json (nerfstudio) or transforms_train.json (Blender), or the JSON file itself."
        )
    for name in ("transforms.json", "transforms_train.json"):
        if (data / name).exists():
            return data / name
    raise SceneFormatError(
        f"No transforms.json (nerfstudio) or transforms_train.json (Blender) in {data}. "
        "Point --data at a scene folder or at the JSON file itself."
    )


def _resolve_image(base: Path, file_path: str, transforms: Path) -> Path:
    path = base / file_path
    # Blender lists "./train/r_0" without an extension.
    for candidate in (path, *(Path(f"{path}{suffix}") for suffix in (".png", ".jpg", ".jpeg"))):
        if candidate.is_file():
            return candidate
    raise SceneFormatError(f"Image {path} listed in {transforms} does not exist.")


def _frame_intrinsics(meta: Dict[str, Any], frame: Dict[str, Any], image: Path, transforms: Path, index: int):
    def get(key: str):
        return frame.get(key, meta.get(key))

    width, height = get("w"), get("h")
    if width is None or height is None:
        with Image.open(image) as pil:
            width, height = pil.size
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None and get("camera_angle_x") is not None:  # Blender: horizontal field of view
        fx = 0.5 * width / np.tan(0.5 * float(get("camera_angle_x")))
    if fx is None:
        raise SceneFormatError(
            f"{transforms} gives no focal length for {image.name}: add fl_x/fl_y (nerfstudio) or camera_angle_x (Blender)."
        )
    fy = fx if fy is None else fy
    cx = get("cx") if get("cx") is not None else width / 2.0
    cy = get("cy") if get("cy") is not None else height / 2.0
    values = {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": width, "h": height}
    broken = {key: value for key, value in values.items() if not _finite_number(value)}
    if broken:
        raise SceneFormatError(
            f"{transforms} gives non-finite or non-numeric intrinsics for frame {index} ({image.name}): {broken}. "
            "Fix fl_x/fl_y/cx/cy/w/h of that frame (or the file-level defaults)."
        )
    distortion = [get(k) or 0.0 for k in ("k1", "k2", "k3", "k4", "p1", "p2")]
    if any(abs(float(d)) > 1e-8 for d in distortion):
        raise SceneFormatError(
            f"{transforms} gives lens distortion for {image.name}; SparseFusion's cameras are pinhole. "
            "Undistort the images first (e.g. with ns-process-data)."
        )
    return float(fx), float(fy), float(cx), float(cy), int(width), int(height)


def _finite_number(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def read_transforms(transforms: Path) -> List[_Frame]:
    """Read every frame of a nerfstudio/Blender transforms file, in file order."""
    try:
        meta = json.loads(transforms.read_text())
    except json.JSONDecodeError as error:
        raise SceneFormatError(f"{transforms} is not valid JSON: {error}") from error
    if not meta.get("frames"):
        raise SceneFormatError(f"{transforms} lists no frames.")
    base = transforms.parent
    frames = []
    for index, frame in enumerate(meta["frames"]):
        if "file_path" not in frame or "transform_matrix" not in frame:
            raise SceneFormatError(f"Frame {index} of {transforms} needs 'file_path' and 'transform_matrix'.")
        image = _resolve_image(base, frame["file_path"], transforms)
        mask = base / frame["mask_path"] if "mask_path" in frame else None
        if mask is not None and not mask.exists():
            raise SceneFormatError(f"Mask {mask} listed in {transforms} (frame {index}) does not exist.")
        matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
        if matrix.shape not in ((4, 4), (3, 4)):
            raise SceneFormatError(f"transform_matrix of frame {index} in {transforms} is not 3x4 or 4x4.")
        if not np.isfinite(matrix).all():
            raise SceneFormatError(
                f"transform_matrix of frame {index} ({frame['file_path']}) in {transforms} holds NaN or infinite "
                f"values: {matrix.tolist()}. Fix that frame's pose, or remove the frame."
            )
        frames.append(_Frame(image, mask, matrix[:3, :4], _frame_intrinsics(meta, frame, image, transforms, index)))
    without_mask = [index for index, frame in enumerate(frames) if frame.mask is None]
    if 0 < len(without_mask) < len(frames):
        shown = ", ".join(f"{i} ({frames[i].image.name})" for i in without_mask[:5])
        more = f" and {len(without_mask) - 5} more" if len(without_mask) > 5 else ""
        raise SceneFormatError(
            f"{len(frames) - len(without_mask)} frames of {transforms} give a 'mask_path' but frames {shown}{more} "
            "do not. Give every frame a mask_path, or none (and store the masks as the images' alpha channels)."
        )
    return frames


OPENGL_FROM_PYTORCH3D_CAMERA = np.diag([-1.0, 1.0, -1.0])
"""PyTorch3D camera axes (+x left, +y up, +z forward) expressed in OpenGL camera axes (+x right, +y up, +z back)."""


def first_camera_alignment(camera_rotation: np.ndarray) -> np.ndarray:
    """World rotation W after which a camera with OpenGL camera-to-world rotation R has identity
    rotation in PyTorch3D convention: W · R = diag(−1, 1, −1), so W = diag(−1, 1, −1) · Rᵀ."""
    return OPENGL_FROM_PYTORCH3D_CAMERA @ camera_rotation.T


def _has_alpha(path: Path) -> bool:
    with Image.open(path) as pil:
        return pil.mode in ("RGBA", "LA") or (pil.mode == "P" and "transparency" in pil.info)


@dataclass
class SparseViewsDataParser(DataParser):
    """Reads a scene and splits it into input views (``train``) and held-out views (``val``/``test``)."""

    config: SparseViewsDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        config = self.config
        transforms = _find_transforms(Path(config.data))
        frames = read_transforms(transforms)
        input_views = select_input_views(
            len(frames),
            indices=config.input_views,
            count=config.num_input_views,
            seed=config.selection_seed,
            allow_more_views=config.allow_more_views,
            source=str(transforms),
        )
        chosen = input_views if split == "train" else held_out_views(len(frames), input_views)
        selected = [frames[i] for i in chosen]

        has_mask_files = all(f.mask is not None for f in selected)
        if config.require_masks and not has_mask_files:
            missing = [f.image for f in selected if f.mask is None and not _has_alpha(f.image)]
            if missing:
                raise SceneFormatError(
                    f"{len(missing)} image(s) of {transforms} have neither an alpha channel nor a 'mask_path', "
                    f"e.g. {missing[0]}. SparseFusion needs a foreground mask per view: save RGBA images "
                    "(alpha = mask) or add 'mask_path' to each frame."
                )

        world_rotation = np.eye(3)
        if config.orient_to_first_input:
            world_rotation = first_camera_alignment(frames[input_views[0]].camera_to_world[:3, :3])
        poses = torch.from_numpy(np.stack([world_rotation @ f.camera_to_world for f in selected])).float()
        poses[:, :3, 3] *= config.scale_factor
        fx, fy, cx, cy, width, height = (torch.tensor([f.intrinsics[k] for f in selected]) for k in range(6))
        cameras = Cameras(
            camera_to_worlds=poses,
            fx=fx.float()[:, None],
            fy=fy.float()[:, None],
            cx=cx.float()[:, None],
            cy=cy.float()[:, None],
            width=width.long()[:, None],
            height=height.long()[:, None],
            camera_type=CameraType.PERSPECTIVE,
        )
        if config.camera_check != "off" and split == "train":
            names = [f"frame {i} ({frames[i].image.name})" for i in chosen]
            problems = check_cameras(cameras, source=str(transforms), names=names)
            for problem in problems:
                if config.camera_check == "error":
                    raise SceneFormatError(problem)
                CONSOLE.print(f"[bold yellow]Camera check:[/bold yellow] {problem}")

        half = config.scene_half_extent
        metadata: Dict[str, Any] = {
            "input_view_indices": input_views,
            "frame_indices": chosen,
            "fg_mask_filenames": [f.mask for f in selected] if has_mask_files else None,
        }
        return DataparserOutputs(
            image_filenames=[f.image for f in selected],
            cameras=cameras,
            alpha_color=torch.zeros(3),
            scene_box=SceneBox(aabb=torch.tensor([[-half] * 3, [half] * 3], dtype=torch.float32)),
            metadata=metadata,
            dataparser_transform=torch.cat([torch.from_numpy(world_rotation).float(), torch.zeros(3, 1)], dim=1),
            dataparser_scale=config.scale_factor,
        )
