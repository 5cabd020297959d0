"""Binary PLY files of points or triangle meshes, written atomically (never half-written).

Little-endian: float ``x y z``, optional float ``nx ny nz``, uchar ``red green blue`` per vertex, and
triangles as ``uchar`` counts with ``int`` indices. trimesh, open3d and MeshLab read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from jaxtyping import Float, Int

from sparsefusion_ns.utils.atomic_files import atomic_file


def write_ply(
    path: Path,
    vertices: Float[np.ndarray, "v 3"],
    colours: Float[np.ndarray, "v 3"],
    faces: Optional[Int[np.ndarray, "f 3"]] = None,
    normals: Optional[Float[np.ndarray, "v 3"]] = None,
    comments: Sequence[str] = (),
) -> Path:
    """Write vertices (with colours in [0, 1] and optional normals) and optional triangles to ``path``."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(len(vertices), dtype=fields)
    for axis, name in enumerate("xyz"):
        vertex[name] = vertices[:, axis]
        if normals is not None:
            vertex["n" + name] = normals[:, axis]
    rgb = np.round(np.clip(colours, 0.0, 1.0) * 255.0).astype(np.uint8)
    for channel, name in enumerate(("red", "green", "blue")):
        vertex[name] = rgb[:, channel]
    header = ["ply", "format binary_little_endian 1.0", *(f"comment {comment}" for comment in comments)]
    header += [f"element vertex {len(vertex)}"]
    header += [f"property {'float' if kind == '<f4' else 'uchar'} {name}" for name, kind in fields]
    face = None
    if faces is not None:
        face = np.empty(len(faces), dtype=[("count", "u1"), ("indices", "<i4", (3,))])
        face["count"] = 3
        face["indices"] = faces
        header += [f"element face {len(face)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    with atomic_file(Path(path), "wb") as file:
        file.write(("\n".join(header) + "\n").encode("ascii"))
        file.write(vertex.tobytes())
        if face is not None:
            file.write(face.tobytes())
    return Path(path)
