"""A CO3Dv2 sequence as a sparse-view nerfstudio scene, chosen and preprocessed as the authors do.

Frame choice (the SparseFusion evaluation protocol):

1. The scene is a sequence of ``Co3dCategory.evaluation_frames(subset, subset_split)``: by
   default the ``test`` frames of ``set_lists_fewview_dev.json``, sequences ordered by name; the
   *scene index* is the position in that order (``sequence_name`` may be given instead).
2. ``num_frames`` (32) frames evenly spaced over the sequence's time-ordered frames:
   ``floor(i (n - 1) / 31)``, i = 0..31 (``co3d_annotations.evenly_spaced_indices``). The authors
   repeat frames when a sequence has fewer than 32; we take all frames then, and warn.
3. Input views: ``torch.randperm(num_frames, generator=torch.Generator().manual_seed(seed))[:V]``
   with ``seed = scene index`` (the authors' ``val_seed + val_idx`` with ``val_seed = 0``), V = 2, 3
   or 6. They are returned sorted; every other chosen frame is held out.

Each chosen frame is cropped around its mask, resized and padded to ``image_size``^2
(``co3d_preprocess``) once, into ``cache_dir``: an RGBA PNG (RGB not masked, alpha = mask) and a
PNG of the valid (unpadded) region. Splits: ``train`` = input views; ``val`` and ``test`` = the
held-out frames. Cameras stay in CO3D's world frame, converted to nerfstudio's convention by
``sparsefusion_ns.cameras.conventions``, rotated about the origin so that the first input camera
has the identity rotation (``orient_to_first_input``; the authors rotate to chosen frame 0, which
need not be an input view).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
from PIL import Image

from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.cameras.conventions import ndc_to_nerfstudio
from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras
from sparsefusion_ns.data.camera_checks import check_cameras
from sparsefusion_ns.data.co3d_annotations import Co3dCategory, Co3dFormatError, Co3dFrame, evenly_spaced_indices
from sparsefusion_ns.data.co3d_preprocess import TEACHER_CROP_KEY, Co3dPreprocessing, preprocess_frame
from sparsefusion_ns.data.view_selection import ViewSelectionError, held_out_views, select_input_views
from sparsefusion_ns.utils.atomic_files import atomic_path, write_text_atomically

CACHE_VERSION = 1
"""Bump when the cached files change meaning; older caches are then rebuilt."""


@dataclass
class Co3dDataParserConfig(DataParserConfig):
    """One CO3Dv2 sequence: a few input views and the held-out views of the authors' protocol."""

    _target: Type = field(default_factory=lambda: Co3dDataParser)
    data: Path = Path("data/co3d")
    """CO3Dv2 root: the folder holding one folder per category (``<data>/<category>/frame_annotations.jgz``)."""
    category: str = "hydrant"
    """Object category (the paper's ten: donut apple hydrant vase cake ball bench suitcase teddybear plant)."""
    sequence_name: Optional[str] = None
    """Sequence to reconstruct. None: the sequence at ``scene_index``."""
    scene_index: int = 0
    """Position of the sequence in the subset's evaluation list (sorted by name), as in the authors' evaluation."""
    subset: str = "fewview_dev"
    """Set list the sequence comes from (``set_lists/set_lists_<subset>.json``)."""
    subset_split: str = "test"
    """Split of that set list whose frames are used (the authors evaluate on ``test``)."""
    num_frames: int = 32
    """Frames evenly spaced over the sequence; input and held-out views are drawn from them."""
    num_input_views: int = 2
    """Number V of input views drawn by the seeded permutation (the paper uses 2, 3 and 6)."""
    input_views: Tuple[int, ...] = ()
    """Explicit input views, as indices into the ``num_frames`` chosen frames. Empty: draw ``num_input_views``."""
    selection_seed: Optional[int] = None
    """Seed of the input-view permutation. None: the scene index (the authors' rule)."""
    allow_more_views: bool = False
    """Accept more than six input views (beyond the paper's sparse setting)."""
    cache_dir: Path = Path("outputs/co3d_cache")
    """Folder for the preprocessed images (written once per frame and preprocessing setting)."""
    image_size: int = 256
    """Side of the square preprocessed images."""
    mask_threshold: float = 0.4
    """Foreground probability above which a pixel belongs to the object's crop box."""
    box_context: float = 0.3
    """Relative growth of the crop box around the mask (0.3: 15 % on every side)."""
    orient_to_first_input: bool = True
    """Rotate the world about its origin so the first input camera has the identity rotation (PyTorch3D
    convention), as ``sparse-views`` does; stored as the dataparser transform. (The authors rotate to
    chosen frame 0 instead, which need not be an input view.)"""
    scene_half_extent: float = 4.0
    """Half side of the scene box around the world origin; SparseFusion's field covers [-4, 4]^3."""
    camera_check: Literal["warn", "error", "off"] = "warn"
    """What to do when the input cameras look wrong (see ``camera_checks.py``)."""


@dataclass(frozen=True)
class Co3dScene:
    """The chosen frames of one sequence and which of them are input views."""

    category: Co3dCategory
    """The category's annotations."""
    scene_index: int
    """Position of the sequence in the evaluation list (seeds the input-view permutation by default)."""
    sequence_name: str
    """The chosen sequence."""
    frames: List[Co3dFrame]
    """The ``num_frames`` chosen frames, in time order."""
    input_views: List[int]
    """Indices into ``frames`` of the input views, sorted."""


def check_viewpoints(frames: List[Co3dFrame], source: str) -> None:
    """Refuse frames without a camera, or whose camera holds NaN or infinite values, naming them."""
    for frame in frames:
        viewpoint = frame.viewpoint
        values = () if viewpoint is None else (viewpoint.R, viewpoint.T, viewpoint.focal_length)
        values += () if viewpoint is None else (viewpoint.principal_point,)
        if viewpoint is None or not all(np.isfinite(np.asarray(value, dtype=np.float64)).all() for value in values):
            problem = "has no viewpoint" if viewpoint is None else "has NaN or infinite values in its viewpoint"
            raise Co3dFormatError(
                f"Frame {frame.frame_number} ({frame.image_path}) of {source} {problem} (R, T, focal_length, "
                "principal_point in frame_annotations.jgz). Fix its annotation, or choose another sequence."
            )


def choose_scene(config: Co3dDataParserConfig) -> Co3dScene:
    """Apply the frame and input-view rules of the module docstring."""
    category = Co3dCategory(config.data, config.category)
    scene_index, name, frames = category.scene(
        config.subset, config.subset_split, config.sequence_name, config.scene_index
    )
    if len(frames) < config.num_frames:
        CONSOLE.print(
            f"[bold yellow]Sequence {name} has only {len(frames)} frames in the {config.subset_split!r} split "
            f"of {config.subset!r}; using all of them instead of {config.num_frames} (the authors repeat frames "
            "here).[/bold yellow]"
        )
        chosen = frames
    else:
        chosen = [frames[i] for i in evenly_spaced_indices(len(frames), config.num_frames)]
    check_viewpoints(chosen, f"sequence {name} of {Path(config.data) / config.category}")
    source = f"sequence {name} ({len(chosen)} chosen frames)"
    if config.input_views:
        input_views = select_input_views(
            len(chosen), indices=config.input_views, allow_more_views=config.allow_more_views, source=source
        )
    else:
        if config.num_input_views > len(chosen):
            raise ViewSelectionError(
                f"{config.num_input_views} input views were asked for but {source} has only {len(chosen)}."
            )
        seed = scene_index if config.selection_seed is None else config.selection_seed
        generator = torch.Generator().manual_seed(seed)
        drawn = torch.randperm(len(chosen), generator=generator)[: config.num_input_views].tolist()
        input_views = select_input_views(
            len(chosen), indices=drawn, allow_more_views=config.allow_more_views, source=source
        )
    return Co3dScene(category, scene_index, name, chosen, input_views)


def _cache_folder(config: Co3dDataParserConfig, sequence_name: str, settings: Co3dPreprocessing) -> Path:
    tag = f"v{CACHE_VERSION}_s{settings.image_size}_t{settings.mask_threshold:g}_c{settings.box_context:g}"
    return Path(config.cache_dir) / config.category / sequence_name / tag


def preprocess_into_cache(
    root: Path, frames: List[Co3dFrame], folder: Path, settings: Co3dPreprocessing
) -> Dict[int, Dict[str, Any]]:
    """Preprocess frames not yet in ``folder``; return frame number -> cached record (files, intrinsics).

    A record is reused only if it was made from the same image, mask and intrinsics annotation.
    """
    folder.mkdir(parents=True, exist_ok=True)
    index_file = folder / "frames.json"
    index: Dict[str, Dict[str, Any]] = json.loads(index_file.read_text()) if index_file.is_file() else {}
    changed = False
    for frame in frames:
        key = str(frame.frame_number)
        record = index.get(key)
        source = {
            "image": frame.image_path,
            "mask": frame.mask_path,
            "focal_length": None if frame.viewpoint is None else frame.viewpoint.focal_length.tolist(),
            "principal_point": None if frame.viewpoint is None else frame.viewpoint.principal_point.tolist(),
            "intrinsics_format": None if frame.viewpoint is None else frame.viewpoint.intrinsics_format,
        }
        up_to_date = record is not None and record["source"] == source
        if up_to_date and all((folder / record[k]).is_file() for k in ("rgba", "valid")):
            continue
        processed = preprocess_frame(root, frame, settings)
        stem = f"frame{frame.frame_number:06d}"
        rgba = torch.cat([processed.image, processed.mask], dim=0).permute(1, 2, 0).numpy()
        with atomic_path(folder / f"{stem}_rgba.png") as temporary:
            Image.fromarray(np.round(rgba * 255).astype(np.uint8), mode="RGBA").save(temporary, format="PNG")
        valid = processed.valid[0].numpy()
        with atomic_path(folder / f"{stem}_valid.png") as temporary:
            Image.fromarray(np.round(valid * 255).astype(np.uint8), mode="L").save(temporary, format="PNG")
        index[key] = {
            "rgba": f"{stem}_rgba.png",
            "valid": f"{stem}_valid.png",
            "source": source,
            "focal_length": processed.focal_length.tolist(),
            "principal_point": processed.principal_point.tolist(),
            "crop_box_xyxy": list(asdict(processed.crop_box).values()),
            "scale": processed.scale,
        }
        changed = True
    if changed:
        write_text_atomically(index_file, json.dumps(index, indent=1))
    return {int(k): v for k, v in index.items()}


@dataclass
class Co3dDataParser(DataParser):
    """Reads a CO3Dv2 sequence; ``train`` = input views, ``val``/``test`` = held-out frames."""

    config: Co3dDataParserConfig

    @cached_property
    def scene(self) -> Co3dScene:
        """The chosen frames and input views (the annotations are read once per parser)."""
        return choose_scene(self.config)

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        config = self.config
        scene = self.scene
        settings = Co3dPreprocessing(config.image_size, config.mask_threshold, config.box_context)
        folder = _cache_folder(config, scene.sequence_name, settings)
        records = preprocess_into_cache(Path(config.data), scene.frames, folder, settings)

        chosen = scene.input_views if split == "train" else held_out_views(len(scene.frames), scene.input_views)
        frames = [scene.frames[i] for i in chosen]
        selected = [records[frame.frame_number] for frame in frames]

        def stack(values: List[Any]) -> torch.Tensor:
            return torch.tensor(np.stack(values), dtype=torch.float32)

        # World rotation W (x' = W x). With W = R_0^T the first input camera's axes become the world
        # axes: X_view = R^T x + T = (W R)^T x' + T, so R' = W R and T' = T (R_0' = I).
        first_input = scene.frames[scene.input_views[0]].viewpoint.R
        world_rotation = first_input.T if config.orient_to_first_input else np.eye(3)
        ndc_cameras = NDCCameras(
            R=stack([world_rotation @ frame.viewpoint.R for frame in frames]),  # extrinsics: unchanged by the crop
            T=stack([frame.viewpoint.T for frame in frames]),
            focal_length=stack([r["focal_length"] for r in selected]),  # intrinsics: of the processed image
            principal_point=stack([r["principal_point"] for r in selected]),
        )
        cameras = ndc_to_nerfstudio(ndc_cameras, (config.image_size, config.image_size))
        if config.camera_check != "off" and split == "train":
            names = [f"frame {frame.frame_number}" for frame in frames]
            for problem in check_cameras(cameras, source=f"CO3D sequence {scene.sequence_name}", names=names):
                if config.camera_check == "error":
                    raise Co3dFormatError(problem)
                CONSOLE.print(f"[bold yellow]Camera check:[/bold yellow] {problem}")

        half = config.scene_half_extent
        metadata: Dict[str, Any] = {
            "input_view_indices": scene.input_views,
            "frame_indices": chosen,
            "valid_mask_filenames": [folder / r["valid"] for r in selected],
            "co3d_frame_numbers": [frame.frame_number for frame in frames],
            "co3d_sequence_name": scene.sequence_name,
            "co3d_scene_index": scene.scene_index,
            TEACHER_CROP_KEY: settings,  # the images already are the teacher's crops
        }
        return DataparserOutputs(
            image_filenames=[folder / r["rgba"] for r in selected],
            cameras=cameras,
            alpha_color=torch.zeros(3),
            scene_box=SceneBox(aabb=torch.tensor([[-half] * 3, [half] * 3], dtype=torch.float32)),
            metadata=metadata,
            dataparser_transform=torch.cat([torch.from_numpy(world_rotation).float(), torch.zeros(3, 1)], dim=1),
        )
