"""Analytic shapes and their first ray hit: the one ray caster behind every synthetic image.

Synthetic data in this project (the demo scene, the procedural object category, the CO3D test
fixture) is ray-cast from a few primitives with numpy, so it needs no renderer and no download
and its geometry is known exactly (for camera tests and for scoring exported meshes):

- :class:`Ellipsoid` (a sphere when its radii are equal), optionally rotated;
- :class:`Box`, optionally rotated;
- :class:`Cylinder` between two points, with flat caps.

Each :class:`Part` pairs a primitive with a surface colour: a constant albedo or a
:class:`Pattern` evaluated at the hit point in the part's own frame (stripes and spots).
:meth:`ShapeScene.cast` returns the nearest hit of every ray; :meth:`ShapeScene.shade` turns hits
into colours with a :class:`Lighting` (ambient + Lambertian from a fixed direction, or from the
viewing direction: a headlight).

Rays are ``origins + t · directions`` with ``t > 0``; directions need not be unit, and ``t`` is
measured in units of the direction's length (so with view-space directions of z = 1, ``t`` is the
view depth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from jaxtyping import Bool, Float

Vector = Tuple[float, float, float]
_NO_HIT = np.inf


def _rotation(rotation: Optional[np.ndarray]) -> np.ndarray:
    return np.eye(3) if rotation is None else np.asarray(rotation, np.float64).reshape(3, 3)


@dataclass(frozen=True, eq=False)
class Ellipsoid:
    """Points ``x`` with ``|R^T (x − centre) / radii| = 1``; the columns of ``rotation`` (R) are its axes."""

    centre: Vector
    """World position of the centre."""
    radii: Vector
    """Semi-axes along the (rotated) x, y and z axes."""
    rotation: Optional[np.ndarray] = None
    """(3, 3) rotation whose columns are the ellipsoid's axes in world coordinates; None: identity."""

    def to_local(self, points: np.ndarray) -> np.ndarray:
        """World points in the frame where the ellipsoid is axis-aligned at the origin (unscaled)."""
        return (points - np.asarray(self.centre)) @ _rotation(self.rotation)

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(t of the first hit, inf for none; outward unit normals at the hits)."""
        rotation, radii = _rotation(self.rotation), np.asarray(self.radii, np.float64)
        o = (origins - np.asarray(self.centre)) @ rotation / radii  # the unit sphere's frame
        d = directions @ rotation / radii
        a = np.einsum("...i,...i->...", d, d)
        b = np.einsum("...i,...i->...", d, o)
        c = np.einsum("...i,...i->...", o, o) - 1.0
        discriminant = b * b - a * c
        with np.errstate(invalid="ignore"):
            root = np.sqrt(discriminant)
            t = (-b - root) / a  # nearer root of a t² + 2 b t + c = 0
            t = np.where(t > 0, t, (-b + root) / a)  # ray starting inside
        t = np.where((discriminant >= 0) & (t > 0), t, _NO_HIT)
        local = o + np.where(np.isfinite(t), t, 0.0)[..., None] * d
        normals = (local / radii) @ rotation.T  # gradient of |x/r|² maps back by R / r
        return t, _unit(normals)


def Sphere(centre: Vector, radius: float) -> Ellipsoid:  # noqa: N802 (reads as a shape)
    """An :class:`Ellipsoid` with three equal radii."""
    return Ellipsoid(centre, (radius, radius, radius))


@dataclass(frozen=True, eq=False)
class Box:
    """A box of ``half_extents`` around ``centre``, its axes the columns of ``rotation``."""

    centre: Vector
    """World position of the centre."""
    half_extents: Vector
    """Half side lengths along the (rotated) x, y and z axes."""
    rotation: Optional[np.ndarray] = None
    """(3, 3) rotation whose columns are the box's axes in world coordinates; None: identity."""

    def to_local(self, points: np.ndarray) -> np.ndarray:
        """World points in the box's frame (centre at the origin, axis-aligned)."""
        return (points - np.asarray(self.centre)) @ _rotation(self.rotation)

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(t of the first hit, inf for none; outward unit normals at the hits): the slab method."""
        rotation, half = _rotation(self.rotation), np.asarray(self.half_extents, np.float64)
        o = (origins - np.asarray(self.centre)) @ rotation
        d = directions @ rotation
        with np.errstate(divide="ignore", invalid="ignore"):
            t0, t1 = (-half - o) / d, (half - o) / d
        near, far = np.minimum(t0, t1), np.maximum(t0, t1)
        near = np.where(np.isnan(near), -np.inf, near)  # a ray parallel to a slab, inside it
        far = np.where(np.isnan(far), np.inf, far)
        t_near, t_far = near.max(-1), far.min(-1)
        t = np.where(t_near > 0, t_near, t_far)  # from inside, the exit
        t = np.where((t_far >= t_near) & (t > 0), t, _NO_HIT)
        axis = np.where(t_near > 0, near.argmax(-1), far.argmin(-1))
        local_normals = np.zeros(np.broadcast_shapes(o.shape, d.shape))
        side = -np.sign(np.take_along_axis(np.broadcast_to(d, local_normals.shape), axis[..., None], -1))
        np.put_along_axis(local_normals, axis[..., None], np.where(t_near > 0, 1.0, -1.0)[..., None] * side, -1)
        return t, local_normals @ rotation.T


@dataclass(frozen=True, eq=False)
class Cylinder:
    """A solid cylinder of ``radius`` around the segment from ``start`` to ``end``, with flat caps."""

    start: Vector
    """Centre of one cap."""
    end: Vector
    """Centre of the other cap."""
    radius: float
    """Radius."""

    def _frame(self) -> Tuple[np.ndarray, np.ndarray, float]:
        start, end = np.asarray(self.start, np.float64), np.asarray(self.end, np.float64)
        length = float(np.linalg.norm(end - start))
        return start, (end - start) / length, length

    def to_local(self, points: np.ndarray) -> np.ndarray:
        """(distance along the axis from ``start``, and the two world-free radial coordinates)."""
        start, axis, _ = self._frame()
        helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        u = _unit(np.cross(axis, helper))
        v = np.cross(axis, u)
        offset = points - start
        return np.stack([offset @ u, offset @ v, offset @ axis], axis=-1)

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(t of the first hit, inf for none; outward unit normals at the hits)."""
        start, axis, length = self._frame()
        o = origins - start
        o_along, d_along = o @ axis, directions @ axis
        o_radial = o - o_along[..., None] * axis
        d_radial = directions - d_along[..., None] * axis
        a = np.einsum("...i,...i->...", d_radial, d_radial)
        b = np.einsum("...i,...i->...", d_radial, o_radial)
        c = np.einsum("...i,...i->...", o_radial, o_radial) - self.radius**2
        discriminant = b * b - a * c
        with np.errstate(divide="ignore", invalid="ignore"):
            t_side = (-b - np.sqrt(discriminant)) / a
            along_side = o_along + t_side * d_along
            side_ok = (discriminant >= 0) & (t_side > 0) & (along_side >= 0) & (along_side <= length)
            t_side = np.where(side_ok, t_side, _NO_HIT)
            caps = []
            for plane in (0.0, length):
                t_cap = (plane - o_along) / d_along
                radial = o_radial + t_cap[..., None] * d_radial
                inside = np.einsum("...i,...i->...", radial, radial) <= self.radius**2
                caps.append(np.where((t_cap > 0) & inside, t_cap, _NO_HIT))
        t = np.minimum(t_side, np.minimum(*caps))
        hit_side = (t_side <= caps[0]) & (t_side <= caps[1])
        points_radial = o_radial + np.where(np.isfinite(t), t, 0.0)[..., None] * d_radial
        cap_normal = np.where((caps[0] < caps[1])[..., None], -axis, axis)
        normals = np.where(hit_side[..., None], points_radial / self.radius, cap_normal)
        return t, _unit(normals)


Primitive = Union[Ellipsoid, Box, Cylinder]


@dataclass(frozen=True)
class Pattern:
    """Two colours laid on a part's surface, as a function of the hit point in the part's frame.

    ``stripes``: bands across ``axis`` of width ``π / frequency``;
    ``spots``: round spots on a jittered 3D lattice of spacing ``2π / frequency``.
    """

    kind: str
    """``stripes`` or ``spots``."""
    base: Vector
    """Colour between the stripes or spots."""
    accent: Vector
    """Colour of the stripes or spots."""
    frequency: float = 6.0
    """Spatial frequency, in radians per world unit."""
    axis: int = 1
    """Local axis the stripes run across (stripes only)."""
    phase: float = 0.0
    """Offset of the pattern along its axis (or of the lattice), in radians."""

    def __post_init__(self) -> None:
        if self.kind not in ("stripes", "spots"):
            raise ValueError(f"Pattern.kind={self.kind!r}: expected 'stripes' or 'spots'")

    def __call__(self, local: np.ndarray) -> np.ndarray:
        """Colours (..., 3) at points given in the part's local frame (..., 3)."""
        if self.kind == "stripes":
            accent = np.sin(local[..., self.axis] * self.frequency + self.phase) > 0.35
        else:
            cell = local * self.frequency / (2.0 * np.pi) + self.phase / (2.0 * np.pi)
            offset = cell - np.round(cell)
            accent = np.einsum("...i,...i->...", offset, offset) < 0.3**2
        return np.where(accent[..., None], np.asarray(self.accent), np.asarray(self.base))


@dataclass(frozen=True)
class Part:
    """A primitive with its surface colour."""

    primitive: Primitive
    """Its geometry."""
    colour: Union[Vector, Pattern]
    """Constant albedo (RGB in [0, 1]) or a :class:`Pattern`."""
    name: str = ""
    """What the part is (``body``, ``head``, …), for debugging and tests."""

    def albedo(self, points: np.ndarray) -> np.ndarray:
        """Albedo (..., 3) at world ``points`` on this part."""
        if isinstance(self.colour, Pattern):
            return self.colour(self.primitive.to_local(points))
        return np.broadcast_to(np.asarray(self.colour, np.float64), points.shape).copy()


@dataclass(frozen=True)
class Lighting:
    """``ambient + diffuse · max(0, n · l)``, with ``l`` a fixed direction or, if None, towards the eye."""

    ambient: float = 0.35
    """Light reaching every surface point."""
    diffuse: float = 0.65
    """Weight of the Lambertian term."""
    direction: Optional[Vector] = (0.4, 0.3, 0.87)
    """Direction *towards* the light (normalised here); None: a headlight at the camera."""


@dataclass
class RayHits:
    """The nearest hit of every ray of a batch with leading shape ``...``."""

    t: Float[np.ndarray, "..."]
    """Ray parameter of the hit (inf where nothing is hit)."""
    normals: Float[np.ndarray, "... 3"]
    """Outward unit surface normal (0 where nothing is hit)."""
    albedo: Float[np.ndarray, "... 3"]
    """Surface colour (0 where nothing is hit)."""
    part: np.ndarray
    """Index of the part hit, −1 for none."""

    @property
    def hit(self) -> Bool[np.ndarray, "..."]:
        """Whether the ray hits the object."""
        return self.part >= 0


@dataclass(frozen=True)
class ShapeScene:
    """An object made of :class:`Part` s, lit by one :class:`Lighting`."""

    parts: Tuple[Part, ...]
    """The parts; overlapping parts are fine (the nearest surface wins)."""
    lighting: Lighting = field(default_factory=Lighting)
    """How hits are shaded."""
    bound_centre: Optional[Vector] = None
    """Centre of a sphere containing the whole object; rays that miss it are not traced further
    (a speed-up only). None: no culling."""
    bound_radius: float = 0.0
    """Radius of that sphere."""

    def cast(self, origins: Float[np.ndarray, "... 3"], directions: Float[np.ndarray, "... 3"]) -> RayHits:
        """Nearest hit of each ray ``origins + t · directions`` (t > 0) with any part."""
        origins, directions = np.broadcast_arrays(np.asarray(origins, np.float64), np.asarray(directions, np.float64))
        shape = origins.shape[:-1]
        t_best = np.full(shape, _NO_HIT)
        normals = np.zeros(shape + (3,))
        albedo = np.zeros(shape + (3,))
        part_index = np.full(shape, -1)
        candidates = np.ones(shape, bool)
        if self.bound_centre is not None:
            t_bound, _ = Sphere(self.bound_centre, self.bound_radius).intersect(origins, directions)
            candidates = np.isfinite(t_bound)
        o, d = origins[candidates], directions[candidates]  # (m, 3)
        t_sub = np.full(o.shape[:-1], _NO_HIT)
        n_sub = np.zeros(o.shape)
        index_sub = np.full(o.shape[:-1], -1)
        # Only rays that pass through a part's bounding sphere are intersected with it. With
        # u = o − c: b = d·u = d·o − d·c and |u|² = |o|² − 2 o·c + |c|², so each part costs two
        # matrix-vector products.
        dd, do, oo = (np.einsum("...i,...i->...", x, y) for x, y in ((d, d), (d, o), (o, o)))
        for index, part in enumerate(self.parts):
            centre, radius = bounding_sphere([part])
            c = np.asarray(centre)
            b = do - d @ c
            uu = oo - 2.0 * (o @ c) + c @ c
            near = np.flatnonzero(b * b - dd * (uu - radius**2) >= 0)
            if near.size == 0:
                continue
            t, n = part.primitive.intersect(o[near], d[near])
            closer = t < t_sub[near]
            chosen = near[closer]
            t_sub[chosen] = t[closer]
            n_sub[chosen] = n[closer]
            index_sub[chosen] = index
        colour_sub = np.zeros(o.shape)
        points = o + np.where(np.isfinite(t_sub), t_sub, 0.0)[..., None] * d
        for index, part in enumerate(self.parts):
            on_part = index_sub == index
            if on_part.any():
                colour_sub[on_part] = part.albedo(points[on_part])
        t_best[candidates], normals[candidates] = t_sub, n_sub
        albedo[candidates], part_index[candidates] = colour_sub, index_sub
        return RayHits(t=t_best, normals=normals, albedo=albedo, part=part_index)

    def shade(self, hits: RayHits, directions: Float[np.ndarray, "... 3"]) -> Float[np.ndarray, "... 3"]:
        """Lit colour of each hit (0 where nothing is hit)."""
        if self.lighting.direction is None:
            towards_light = -_unit(np.asarray(directions, np.float64))
        else:
            towards_light = _unit(np.asarray(self.lighting.direction, np.float64))
        cosine = np.clip(np.einsum("...i,...i->...", hits.normals, towards_light), 0.0, 1.0)
        colour = hits.albedo * (self.lighting.ambient + self.lighting.diffuse * cosine)[..., None]
        return np.where(hits.hit[..., None], np.clip(colour, 0.0, 1.0), 0.0)


def bounding_sphere(parts: Sequence[Part], margin: float = 1.05) -> Tuple[Vector, float]:
    """A sphere around every part (centre of the parts' extents; a loose bound, for culling)."""
    lows, highs = [], []
    for part in parts:
        primitive = part.primitive
        if isinstance(primitive, Cylinder):
            ends = np.array([primitive.start, primitive.end])
            lows.append(ends.min(0) - primitive.radius)
            highs.append(ends.max(0) + primitive.radius)
        else:
            extent = np.asarray(primitive.radii if isinstance(primitive, Ellipsoid) else primitive.half_extents)
            reach = np.abs(_rotation(primitive.rotation)) @ extent  # an axis-aligned box around it
            lows.append(np.asarray(primitive.centre) - reach)
            highs.append(np.asarray(primitive.centre) + reach)
    low, high = np.min(lows, axis=0), np.max(highs, axis=0)
    centre = (low + high) / 2.0
    return tuple(float(v) for v in centre), float(np.linalg.norm(high - low) / 2.0 * margin)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norm > 0, norm, 1.0)


# ------------------------------------------------------------------------------- serialisation
_PRIMITIVES = {"ellipsoid": Ellipsoid, "box": Box, "cylinder": Cylinder}


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def scene_to_json(scene: ShapeScene) -> dict:
    """A JSON-ready description of ``scene`` (every number needed to rebuild it exactly)."""
    names = {cls: name for name, cls in _PRIMITIVES.items()}
    parts = []
    for part in scene.parts:
        primitive = {"type": names[type(part.primitive)]}
        primitive.update({k: _plain(v) for k, v in vars(part.primitive).items()})
        colour = vars(part.colour) if isinstance(part.colour, Pattern) else {"albedo": _plain(part.colour)}
        parts.append({"name": part.name, "primitive": primitive, "colour": {k: _plain(v) for k, v in colour.items()}})
    return {
        "parts": parts,
        "lighting": {k: _plain(v) for k, v in vars(scene.lighting).items()},
        "bound_centre": _plain(scene.bound_centre),
        "bound_radius": scene.bound_radius,
    }


def scene_from_json(data: dict) -> ShapeScene:
    """Inverse of :func:`scene_to_json`."""
    parts = []
    for record in data["parts"]:
        primitive = dict(record["primitive"])
        cls = _PRIMITIVES[primitive.pop("type")]
        if primitive.get("rotation") is not None:
            primitive["rotation"] = np.asarray(primitive["rotation"], np.float64)
        for key in ("centre", "radii", "half_extents", "start", "end"):
            if key in primitive:
                primitive[key] = tuple(primitive[key])
        colour = dict(record["colour"])
        if "albedo" in colour:
            surface: Union[Vector, Pattern] = tuple(colour["albedo"])
        else:
            surface = Pattern(**{k: tuple(v) if isinstance(v, list) else v for k, v in colour.items()})
        parts.append(Part(cls(**primitive), surface, record.get("name", "")))
    lighting = dict(data["lighting"])
    if lighting.get("direction") is not None:
        lighting["direction"] = tuple(lighting["direction"])
    centre = data.get("bound_centre")
    return ShapeScene(
        parts=tuple(parts),
        lighting=Lighting(**lighting),
        bound_centre=None if centre is None else tuple(centre),
        bound_radius=float(data.get("bound_radius", 0.0)),
    )
