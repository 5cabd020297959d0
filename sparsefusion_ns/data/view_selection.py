"""Choosing the 2–6 input views of a sparse-view scene.

SparseFusion reconstructs an object from a handful of posed, masked photos. Every frame of a
scene that is *not* an input view is held out for evaluation. Views are chosen either by an
explicit index list or by a count; a count is turned into indices with a seeded permutation, so
the same (count, seed) always picks the same views on every machine.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

MIN_INPUT_VIEWS = 2
"""SparseFusion needs at least two views: the EFT reads epipolar lines across input views."""
MAX_INPUT_VIEWS = 6
"""The paper evaluates V = 2, 3 and 6 input views; more is allowed only when asked for explicitly."""


class ViewSelectionError(ValueError):
    """The requested input views cannot be taken from the scene."""


def select_input_views(
    num_frames: int,
    indices: Optional[Sequence[int]] = None,
    count: Optional[int] = None,
    seed: int = 0,
    allow_more_views: bool = False,
    source: str = "the scene",
) -> List[int]:
    """Return the sorted frame indices of the input views.

    Args:
        num_frames: number of frames in the scene.
        indices: explicit frame indices (takes precedence over ``count``).
        count: number of views to draw with a permutation seeded by ``seed``.
        seed: seed of the permutation used with ``count``.
        allow_more_views: accept more than six input views (beyond the paper's setting).
        source: what the frames come from, used in error messages (a file path).
    """
    if indices is not None and len(indices) > 0:
        chosen = [int(i) for i in indices]
        bad = [i for i in chosen if not 0 <= i < num_frames]
        if bad:
            raise ViewSelectionError(
                f"Input view indices {bad} are out of range for {source}, which has {num_frames} frames "
                f"(valid indices: 0..{num_frames - 1}). Fix the dataparser's --input-views."
            )
        if len(set(chosen)) != len(chosen):
            raise ViewSelectionError(f"Input view indices {list(indices)} for {source} contain duplicates.")
    elif count is not None:
        if count > num_frames:
            raise ViewSelectionError(f"{count} input views were asked for but {source} has only {num_frames} frames.")
        rng = np.random.default_rng(seed)
        chosen = [int(i) for i in rng.permutation(num_frames)[:count]]
    else:
        raise ViewSelectionError("Give either explicit input view indices or a number of input views.")

    if len(chosen) < MIN_INPUT_VIEWS:
        raise ViewSelectionError(
            f"SparseFusion needs at least {MIN_INPUT_VIEWS} input views; got {len(chosen)} for {source}. "
            "Pass more indices to the dataparser's --input-views (e.g. `ns-train sparsefusion sparse-views "
            "--input-views 0 5 10`), or a larger --num-input-views."
        )
    if len(chosen) > MAX_INPUT_VIEWS and not allow_more_views:
        raise ViewSelectionError(
            f"{len(chosen)} input views were asked for {source}, but SparseFusion is a sparse-view method "
            f"evaluated with 2–{MAX_INPUT_VIEWS} views. Pass the dataparser option "
            "--allow-more-views True to use more."
        )
    if len(chosen) >= num_frames:
        raise ViewSelectionError(
            f"All {num_frames} frames of {source} would be input views, leaving none held out for evaluation."
        )
    return sorted(chosen)


def held_out_views(num_frames: int, input_views: Sequence[int]) -> List[int]:
    """All frames that are not input views, in order."""
    taken = set(input_views)
    return [i for i in range(num_frames) if i not in taken]
