"""EFT colour and features of every pool camera, computed once and kept on the model's device.

The EFT output of a pool camera depends only on the input views and the camera, never on the
field, so the authors compute it once per pool camera before the optimisation (docs/method.md#novel-camera-pool).
Here entries are computed on first use (or all at once by :meth:`TeacherCache.warm_up`) and kept
within a byte budget: when the budget is full the least recently used entry is dropped and
recomputed if drawn again. Results do not depend on the budget (the EFT is deterministic in eval mode).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor

from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras
from sparsefusion_ns.distillation.counters import TeacherCounters
from sparsefusion_ns.teacher.eft import EpipolarFeatureTransformer


@dataclass(frozen=True)
class EFTView:
    """The EFT's answer for one pool camera (g = the EFT grid, the latent resolution)."""

    rgb: Float[Tensor, "3 g g"]
    """Colour c of every grid ray, in [0, 1]."""
    features: Float[Tensor, "c g g"]
    """Feature map f, the VLDM's condition."""

    @property
    def num_bytes(self) -> int:
        return self.rgb.numel() * self.rgb.element_size() + self.features.numel() * self.features.element_size()


class TeacherCache:
    """Per-pool-camera :class:`EFTView`, least-recently-used within ``max_bytes``."""

    def __init__(
        self,
        eft: EpipolarFeatureTransformer,
        input_images: Float[Tensor, "v 3 s s"],
        input_cameras: NDCCameras,
        pool_cameras: NDCCameras,
        depth_center: float,
        max_bytes: int,
        counters: TeacherCounters,
    ) -> None:
        device = next(eft.parameters()).device
        self._eft = eft
        self._images = input_images.to(device)
        self._input_cameras = input_cameras.to(device)
        self._pool_cameras = pool_cameras.to(device)
        self._depth_center = depth_center
        self._max_bytes = max_bytes
        self._counters = counters
        self._entries: "OrderedDict[int, EFTView]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._pool_cameras)

    @property
    def cached_bytes(self) -> int:
        return sum(entry.num_bytes for entry in self._entries.values())

    def __getitem__(self, index: int) -> EFTView:
        """The EFT view of pool camera ``index``, computed now if it is not cached."""
        if index in self._entries:
            self._entries.move_to_end(index)
            return self._entries[index]
        view = self._query(index)
        if view.num_bytes <= self._max_bytes:
            while self._entries and self.cached_bytes + view.num_bytes > self._max_bytes:
                self._entries.popitem(last=False)
            self._entries[index] = view
        return view

    def warm_up(self) -> int:
        """Compute pool cameras in order until all are cached or the budget is full; returns how many are cached."""
        for index in range(len(self)):
            if index in self._entries:
                continue
            view = self._query(index)
            if self.cached_bytes + view.num_bytes > self._max_bytes:
                break
            self._entries[index] = view
        return len(self._entries)

    def is_cached(self, index: int) -> bool:
        return index in self._entries

    def _query(self, index: int) -> EFTView:
        """One EFT query, counted and timed. ``EpipolarFeatureTransformer.query`` runs in the query
        camera's frame: it re-expresses every camera relative to the pool camera first."""
        with self._counters.timed() as cost:
            rgb, features = self._eft.query(
                self._images, self._input_cameras, self._pool_cameras[index], self._depth_center
            )
            cost.eft_queries += 1
        return EFTView(rgb=rgb, features=features)
