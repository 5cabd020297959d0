"""Small scenes written on the fly for tests (no test data is stored in the repository)."""

from __future__ import annotations

import json
from pathlib import Path

from sparsefusion_ns.scripts.make_demo_scene import DemoSceneConfig, make_demo_scene


def demo_scene(folder: Path, num_views: int = 12, resolution: int = 32) -> Path:
    """A demo scene (RGBA images, alpha = mask) in ``folder``; returns the folder."""
    make_demo_scene(DemoSceneConfig(output=folder, num_views=num_views, resolution=resolution))
    return folder


def rewrite_transforms(folder: Path, edit) -> Path:
    """Apply ``edit(dict) -> dict`` to the scene's transforms.json."""
    path = folder / "transforms.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return path
