"""CO3Dv2 annotation files: typed records, reading, writing, and the authors' scene index.

A CO3Dv2 category folder holds (paths inside the annotations are relative to the dataset root,
the folder that contains one folder per category)::

    {root}/{category}/frame_annotations.jgz       gzip JSON list, one record per frame
    {root}/{category}/sequence_annotations.jgz    gzip JSON list, one record per sequence
    {root}/{category}/set_lists/set_lists_{subset}.json
        {"train": [[sequence_name, frame_number, image_path], ...], "val": [...], "test": [...]}
    {root}/{category}/{sequence}/images/frameXXXXXX.jpg, masks/frameXXXXXX.png, depths/..., depth_masks/...

Cameras are PyTorch3D cameras (``X_view = X_world @ R + T``, +X left, +Y up, +Z forward) with
NDC intrinsics in one of two formats (``viewpoint.intrinsics_format``):

- ``ndc_isotropic`` (CO3Dv2): the shorter image side spans [-1, 1]; one scale for both axes.
- ``ndc_norm_image_bounds`` (CO3Dv1, legacy PyTorch3D): each side spans [-1, 1] on its own.
  ``Co3dViewpoint.to_ndc_isotropic`` converts it.

Only the standard library and numpy are used here, so the index can be read anywhere.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

NDC_ISOTROPIC = "ndc_isotropic"
NDC_NORM_IMAGE_BOUNDS = "ndc_norm_image_bounds"
INTRINSICS_FORMATS = (NDC_ISOTROPIC, NDC_NORM_IMAGE_BOUNDS)

MIN_EVAL_FRAMES = 11
"""The authors keep a sequence only if more than 10 of its frames are in the chosen split."""
AUTHORS_EXCLUDED_SEQUENCES = ("411_55952_107659", "376_42884_85882")
"""Two sequences the authors' loader drops from every index ("cause bugs"); dropping them keeps
scene indices identical to theirs."""


class Co3dFormatError(ValueError):
    """A CO3Dv2 file is missing or not in the expected format."""


# ------------------------------------------------------------------------------------ records
@dataclass(frozen=True, eq=False)
class Co3dViewpoint:
    """A frame's PyTorch3D camera as stored in CO3D."""

    R: np.ndarray
    """(3, 3) rotation, row-vector convention ``X_view = X_world @ R + T``."""
    T: np.ndarray
    """(3,) translation."""
    focal_length: np.ndarray
    """(2,) focal length (fx, fy) in the units of ``intrinsics_format``."""
    principal_point: np.ndarray
    """(2,) principal point (px, py) in the units of ``intrinsics_format`` (+x left, +y up)."""
    intrinsics_format: str = NDC_ISOTROPIC
    """``ndc_isotropic`` (CO3Dv2) or ``ndc_norm_image_bounds`` (legacy)."""

    def to_ndc_isotropic(self, image_size_hw: Tuple[int, int]) -> Co3dViewpoint:
        """The same camera with isotropic NDC intrinsics (shorter side spans [-1, 1]).

        ``ndc_norm_image_bounds`` scales x by W/2 and y by H/2; isotropic NDC scales both by
        S/2 with S = min(H, W). A pixel quantity q_px = q_bounds * (W/2, H/2) therefore equals
        q_iso * S/2, so ``q_iso = q_bounds * (W, H) / S`` for focal length and principal point.
        """
        if self.intrinsics_format == NDC_ISOTROPIC:
            return self
        if self.intrinsics_format != NDC_NORM_IMAGE_BOUNDS:
            raise Co3dFormatError(
                f"Unknown intrinsics_format {self.intrinsics_format!r}; expected one of {INTRINSICS_FORMATS}."
            )
        height, width = image_size_hw
        ratio = np.array([width, height], dtype=np.float64) / min(height, width)
        return replace(
            self,
            focal_length=self.focal_length * ratio,
            principal_point=self.principal_point * ratio,
            intrinsics_format=NDC_ISOTROPIC,
        )

    def to_json(self) -> Dict[str, Any]:
        return {
            "R": np.asarray(self.R).tolist(),
            "T": np.asarray(self.T).tolist(),
            "focal_length": np.asarray(self.focal_length).tolist(),
            "principal_point": np.asarray(self.principal_point).tolist(),
            "intrinsics_format": self.intrinsics_format,
        }

    @staticmethod
    def from_json(record: Mapping[str, Any]) -> Co3dViewpoint:
        return Co3dViewpoint(
            R=np.asarray(record["R"], dtype=np.float64).reshape(3, 3),
            T=np.asarray(record["T"], dtype=np.float64).reshape(3),
            focal_length=np.asarray(record["focal_length"], dtype=np.float64).reshape(2),
            principal_point=np.asarray(record["principal_point"], dtype=np.float64).reshape(2),
            # CO3D's own dataclass defaults to the legacy format when the key is absent.
            intrinsics_format=record.get("intrinsics_format", NDC_NORM_IMAGE_BOUNDS),
        )


@dataclass(frozen=True)
class Co3dFrame:
    """One record of ``frame_annotations.jgz``."""

    sequence_name: str
    """Name of the frame's sequence (joins with ``Co3dSequence``)."""
    frame_number: int
    """0-based, continuous frame number within the sequence (not the file name's number)."""
    frame_timestamp: float
    """Seconds from the start of the video; frames are ordered by it."""
    image_path: str
    """JPEG path relative to the dataset root."""
    image_size_hw: Tuple[int, int]
    """(H, W) of the image in pixels."""
    viewpoint: Optional[Co3dViewpoint] = None
    """The camera, if annotated."""
    mask_path: Optional[str] = None
    """Foreground-probability PNG (value = 255 P(fg)), relative to the dataset root."""
    mask_mass: Optional[float] = None
    """Sum of P(fg) over the mask (soft pixel count)."""
    depth_path: Optional[str] = None
    """16-bit PNG holding float16 depth bits, relative to the dataset root."""
    depth_scale_adjustment: float = 1.0
    """Metric depth = stored depth x this factor."""
    depth_mask_path: Optional[str] = None
    """Binary PNG marking depth values that passed the consistency check."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Free-form metadata (CO3Dv2 stores e.g. ``frame_type`` here)."""

    def to_json(self) -> Dict[str, Any]:
        depth = {
            "path": self.depth_path,
            "scale_adjustment": self.depth_scale_adjustment,
            "mask_path": self.depth_mask_path,
        }
        return {
            "sequence_name": self.sequence_name,
            "frame_number": self.frame_number,
            "frame_timestamp": self.frame_timestamp,
            "image": {"path": self.image_path, "size": list(self.image_size_hw)},
            "depth": None if self.depth_path is None else depth,
            "mask": None if self.mask_path is None else {"path": self.mask_path, "mass": self.mask_mass},
            "viewpoint": None if self.viewpoint is None else self.viewpoint.to_json(),
            "meta": dict(self.meta),
        }

    @staticmethod
    def from_json(record: Mapping[str, Any]) -> Co3dFrame:
        image, depth, mask = record["image"], record.get("depth"), record.get("mask")
        return Co3dFrame(
            sequence_name=str(record["sequence_name"]),
            frame_number=int(record["frame_number"]),
            frame_timestamp=float(record.get("frame_timestamp") or 0.0),
            image_path=str(image["path"]),
            image_size_hw=(int(image["size"][0]), int(image["size"][1])),
            viewpoint=None if record.get("viewpoint") is None else Co3dViewpoint.from_json(record["viewpoint"]),
            mask_path=None if mask is None else mask["path"],
            mask_mass=None if mask is None or mask.get("mass") is None else float(mask["mass"]),
            depth_path=None if depth is None else depth["path"],
            depth_scale_adjustment=1.0 if depth is None else float(depth.get("scale_adjustment", 1.0)),
            depth_mask_path=None if depth is None else depth.get("mask_path"),
            meta=dict(record.get("meta") or {}),
        )


@dataclass(frozen=True)
class Co3dSequence:
    """One record of ``sequence_annotations.jgz``."""

    sequence_name: str
    """Unique sequence name, e.g. ``106_12648_23157``."""
    category: str
    """Object category, e.g. ``hydrant``."""
    viewpoint_quality_score: Optional[float] = None
    """Confidence of the camera estimates (higher is better)."""
    point_cloud_path: Optional[str] = None
    """Sequence point cloud (PLY) relative to the dataset root, if any."""

    def to_json(self) -> Dict[str, Any]:
        return {
            "sequence_name": self.sequence_name,
            "category": self.category,
            "video": None,
            "point_cloud": None
            if self.point_cloud_path is None
            else {"path": self.point_cloud_path, "quality_score": None, "n_points": None},
            "viewpoint_quality_score": self.viewpoint_quality_score,
        }

    @staticmethod
    def from_json(record: Mapping[str, Any]) -> Co3dSequence:
        point_cloud = record.get("point_cloud")
        score = record.get("viewpoint_quality_score")
        return Co3dSequence(
            sequence_name=str(record["sequence_name"]),
            category=str(record["category"]),
            viewpoint_quality_score=None if score is None else float(score),
            point_cloud_path=None if point_cloud is None else point_cloud.get("path"),
        )


class SetListEntry(NamedTuple):
    """One frame of a set list: ``[sequence_name, frame_number, image_path]``."""

    sequence_name: str
    frame_number: int
    image_path: str


# ------------------------------------------------------------------------------------ file I/O
def read_jgz(path: Path) -> Any:
    """Read a gzip-compressed JSON file."""
    path = Path(path)
    if not path.is_file():
        raise Co3dFormatError(f"{path} does not exist.")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as file:
            return json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise Co3dFormatError(f"{path} is not a gzip-compressed JSON file ({error}).") from error


def write_jgz(path: Path, content: Any) -> None:
    """Write ``content`` as gzip-compressed JSON (CO3D's ``.jgz``); the same content gives the same
    bytes (no time stamp or file name in the gzip header)."""
    with open(Path(path), "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
        packed.write(json.dumps(content).encode("utf-8"))


def load_frame_annotations(path: Path) -> List[Co3dFrame]:
    records = read_jgz(path)
    try:
        return [Co3dFrame.from_json(record) for record in records]
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise Co3dFormatError(f"{path} does not hold CO3D frame annotations ({error!r}).") from error


def load_sequence_annotations(path: Path) -> List[Co3dSequence]:
    records = read_jgz(path)
    try:
        return [Co3dSequence.from_json(record) for record in records]
    except (KeyError, TypeError, ValueError) as error:
        raise Co3dFormatError(f"{path} does not hold CO3D sequence annotations ({error!r}).") from error


def load_set_lists(path: Path) -> Dict[str, List[SetListEntry]]:
    """Read ``set_lists_{subset}.json``: split name -> frames."""
    path = Path(path)
    if not path.is_file():
        raise Co3dFormatError(f"{path} does not exist.")
    content = json.loads(path.read_text())
    return {split: [SetListEntry(str(s), int(n), str(p)) for s, n, p in entries] for split, entries in content.items()}


# ------------------------------------------------------------------------------------ category
def evenly_spaced_indices(num_available: int, num_wanted: int) -> List[int]:
    """``floor(i (n - 1) / (k - 1))`` for i = 0..k-1: the authors' ``linspace(0, n-1, k).long()``.

    Integer arithmetic gives exactly torch's float32 result: when (k - 1) divides i (n - 1) the
    float32 step is exact, and otherwise the fractional part is at least 1/(k - 1), far above
    float32 rounding. Indices repeat when fewer than ``num_wanted`` frames are available.
    """
    if num_available < 1 or num_wanted < 1:
        raise ValueError(f"Need at least one frame to choose from and to choose; got {num_available} and {num_wanted}.")
    if num_wanted == 1:
        return [0]
    return [(i * (num_available - 1)) // (num_wanted - 1) for i in range(num_wanted)]


class Co3dCategory:
    """The annotations of one CO3Dv2 category, with clear errors for a wrong root or category."""

    def __init__(self, root: Path, category: str):
        root = Path(root)
        if not root.is_dir():
            raise Co3dFormatError(
                f"CO3Dv2 root {root} does not exist. Set it to the folder that holds one folder per category "
                "(e.g. <root>/hydrant/frame_annotations.jgz)."
            )
        folder = root / category
        if not (folder / "frame_annotations.jgz").is_file():
            available = available_categories(root)
            hint = (
                f"Categories found there: {', '.join(available[:12])}{' ...' if len(available) > 12 else ''}."
                if available
                else f"No folder of {root} holds a frame_annotations.jgz: is {root} the CO3Dv2 root?"
            )
            raise Co3dFormatError(
                f"No CO3Dv2 category {category!r} under {root} ({folder / 'frame_annotations.jgz'} is missing). {hint}"
            )
        self.root = root
        self.category = category
        self.folder = folder
        self.frames: List[Co3dFrame] = load_frame_annotations(folder / "frame_annotations.jgz")
        sequences_file = folder / "sequence_annotations.jgz"
        self.sequences: Dict[str, Co3dSequence] = (
            {s.sequence_name: s for s in load_sequence_annotations(sequences_file)} if sequences_file.is_file() else {}
        )
        frames_by_sequence: Dict[str, List[Co3dFrame]] = defaultdict(list)
        for frame in self.frames:
            frames_by_sequence[frame.sequence_name].append(frame)
        self._frames_by_sequence = {
            name: sorted(frames, key=lambda f: f.frame_timestamp) for name, frames in sorted(frames_by_sequence.items())
        }

    @property
    def sequence_names(self) -> List[str]:
        """All annotated sequences, sorted by name."""
        return list(self._frames_by_sequence)

    def available_subsets(self) -> List[str]:
        """Subset names with a ``set_lists/set_lists_{subset}.json`` file."""
        return sorted(p.stem[len("set_lists_") :] for p in (self.folder / "set_lists").glob("set_lists_*.json"))

    def set_list(self, subset: str) -> Dict[str, List[SetListEntry]]:
        path = self.folder / "set_lists" / f"set_lists_{subset}.json"
        if not path.is_file():
            subsets = ", ".join(self.available_subsets()) or "none"
            raise Co3dFormatError(f"No set list {path}. Subsets available for {self.category!r}: {subsets}.")
        return load_set_lists(path)

    def frames_of(self, sequence_name: str) -> List[Co3dFrame]:
        """All frames of a sequence, ordered by timestamp."""
        if sequence_name not in self._frames_by_sequence:
            raise Co3dFormatError(self._unknown_sequence(sequence_name, self.sequence_names))
        return list(self._frames_by_sequence[sequence_name])

    def evaluation_frames(self, subset: str, split: str = "test") -> Dict[str, List[Co3dFrame]]:
        """The authors' evaluation index: sequence name -> its frames, in scene-index order.

        The rule (SparseFusion's CO3Dv2 loader, ``stage='test'``):

        1. keep frames with a mask whose mass is > 1 pixel;
        2. keep frames whose image path is listed under ``split`` in ``set_lists_{subset}.json``;
        3. group by sequence; frames ordered by timestamp, sequences by name;
        4. keep sequences with more than 10 such frames (the authors skip this filter only for
           ``subset == "fewview_test"`` with ``split == "test"``; so do we);
        5. drop ``AUTHORS_EXCLUDED_SEQUENCES``.

        The scene index of a sequence is its position in the returned (ordered) dict.
        """
        set_list = self.set_list(subset)
        if split not in set_list:
            raise Co3dFormatError(
                f"set_lists_{subset}.json of {self.category!r} has no {split!r} split (it has {sorted(set_list)})."
            )
        listed = {entry.image_path for entry in set_list[split]}
        min_frames = 0 if (subset == "fewview_test" and split == "test") else MIN_EVAL_FRAMES
        index: Dict[str, List[Co3dFrame]] = {}
        for name, frames in self._frames_by_sequence.items():
            kept = [f for f in frames if f.image_path in listed and f.mask_mass is not None and f.mask_mass > 1.0]
            if len(kept) >= min_frames and len(kept) > 0 and name not in AUTHORS_EXCLUDED_SEQUENCES:
                index[name] = kept
        return index

    def scene(
        self, subset: str, split: str = "test", sequence_name: Optional[str] = None, scene_index: int = 0
    ) -> Tuple[int, str, List[Co3dFrame]]:
        """(scene index, sequence name, frames) of one evaluation scene, by name or by index."""
        index = self.evaluation_frames(subset, split)
        names = list(index)
        if not names:
            raise Co3dFormatError(
                f"Subset {subset!r} of {self.category!r} has no sequence with frames in its {split!r} split."
            )
        if sequence_name is not None:
            if sequence_name not in index:
                where = f" in the {split!r} split of {subset!r}"
                raise Co3dFormatError(self._unknown_sequence(sequence_name, names, where))
            return names.index(sequence_name), sequence_name, index[sequence_name]
        if not 0 <= scene_index < len(names):
            raise Co3dFormatError(
                f"Scene index {scene_index} is out of range: the {split!r} split of {subset!r} ({self.category!r}) "
                f"has {len(names)} sequences (indices 0..{len(names) - 1})."
            )
        return scene_index, names[scene_index], index[names[scene_index]]

    def _unknown_sequence(self, name: str, valid: Sequence[str], where: str = "") -> str:
        shown = ", ".join(valid[:5]) + (" ..." if len(valid) > 5 else "")
        return f"Unknown sequence {name!r} for category {self.category!r}{where}. Valid sequences include: {shown}."


def available_categories(root: Path) -> List[str]:
    """Folders of ``root`` that hold a ``frame_annotations.jgz``."""
    return sorted(p.parent.name for p in Path(root).glob("*/frame_annotations.jgz"))
