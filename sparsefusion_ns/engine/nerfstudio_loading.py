"""nerfstudio's own commands (``ns-export``, ``ns-viewer``, ``ns-eval``, ``ns-render``) load our runs'
checkpoints the safe way.

They load a run through ``nerfstudio.utils.eval_utils.eval_setup``, which takes the newest
``step-*.ckpt`` as it is: a partial file (left by an older version of this package, or a crash of
another writer) ends in a bare ``EOFError`` or "PytorchStreamReader failed" that does not name it.
:func:`install` replaces ``eval_utils.eval_load_checkpoint`` (which ``eval_setup`` calls) with a
version that, for runs of this package's methods, loads the newest *complete* checkpoint with one
warning naming any partial one (:func:`~sparsefusion_ns.engine.checkpoints.load_checkpoint`); other
methods' runs load exactly as before. ``SparseFusionModel`` installs it when it is built, which
``eval_setup`` does before it loads the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

from sparsefusion_ns.engine.checkpoints import load_checkpoint

METHOD_PREFIX = "sparsefusion"
"""Runs whose ``method_name`` starts with this are this package's."""


def _is_ours(config) -> bool:
    return str(getattr(config, "method_name", "")).startswith(METHOD_PREFIX)


def install() -> None:
    """Route ``eval_setup``'s checkpoint loading of our runs through the safe loader (idempotent)."""
    from nerfstudio.utils import eval_utils  # not at import time: it imports nerfstudio's method registry

    original = eval_utils.eval_load_checkpoint
    if getattr(original, "sparsefusion_safe", False):
        return

    def eval_load_checkpoint(config, pipeline) -> Tuple[Path, int]:
        if not _is_ours(config):
            return original(config, pipeline)
        path, state = load_checkpoint(config.load_dir, config.load_step)
        pipeline.load_pipeline(state["pipeline"], state["step"])
        return path, int(state["step"])

    eval_load_checkpoint.sparsefusion_safe = True  # type: ignore[attr-defined]
    eval_load_checkpoint.__doc__ = original.__doc__
    eval_utils.eval_load_checkpoint = eval_load_checkpoint
