"""Training examples: one query view and 2–5 context views of a scene, cameras relative to the query.

An example is drawn as the authors' training loop does (docs/method.md#training-batch):

1. a pool of ``frames_per_scene`` random frames of the scene;
2. the query: one random frame of the pool;
3. the context: ``k`` random frames of the pool, ``k`` uniform in ``context_views`` (the
   context may contain the query itself, as upstream);
4. the EFT's depth range is centred on d̄, the mean distance of the pool's camera centres from the
   world origin, measured in the scene's world frame;
5. all cameras are re-expressed in the query's view frame (query: R = I, T = 0), the frame the EFT
   runs in (``NDCCameras.relative_to``).

Reproducibility and resuming. What is drawn depends only on a :class:`SampleKey`: the scene and
the example's *position* in the run's global stream of examples. :class:`SceneStream` yields these
keys: epoch ``e`` visits the scenes in a permutation seeded by (seed, e); process ``r`` of ``n``
takes positions ``r, r + n, r + 2n, ...`` from a start position. So the data of every step is a
function of (seed, position): no loader state needs saving, worker processes cannot change it,
and a resumed run sees exactly the examples the uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Dict, Iterator, NamedTuple, Optional, Tuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras
from sparsefusion_ns.teacher_training.config import ViewSamplingConfig
from sparsefusion_ns.teacher_training.latent_cache import LatentCache
from sparsefusion_ns.teacher_training.scenes import LoadedFrame, SceneCollection


class SampleKey(NamedTuple):
    """Which scene an example comes from and where it sits in the run's stream of examples."""

    scene: int
    """Index of the scene in the collection."""
    position: int
    """Global position of the example in the run (seeds everything drawn for it)."""


def example_seed(seed: int, position: int, purpose: int) -> int:
    """A 63-bit seed for one of the random draws (``purpose``) of the example at ``position``."""
    state = np.random.SeedSequence([seed, position, purpose]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & (2**63 - 1)


SEED_PURPOSE_VIEWS = 0
"""``example_seed`` purpose of the frame choice (pool, query, context)."""
SEED_PURPOSE_DIFFUSION = 1
"""``example_seed`` purpose of the diffusion draws (t, noise, condition dropout)."""


@dataclass
class TrainingExample:
    """One query view and its context views at the teacher's image size ``s``."""

    query_image: Float[Tensor, "3 s s"]
    """The query view in [0, 1] (masked unless configured otherwise): the target."""
    query_valid: Float[Tensor, "1 s s"]
    """Valid (unpadded) region of the query view."""
    context_images: Float[Tensor, "v 3 s s"]
    """The context views the EFT reads."""
    query_camera: NDCCameras
    """The query camera in its own view frame (R = I, T = 0)."""
    context_cameras: NDCCameras
    """The context cameras in the query's view frame."""
    depth_center: float
    """d̄: the EFT samples depths d̄ ± ``depth_half_range`` along the query rays."""
    query_latent: Optional[Float[Tensor, "c g g"]]
    """The query view's VAE latent from the latent cache, or None (encoded during training)."""
    position: int
    """Global position of the example (seeds its diffusion draws)."""
    scene: str
    """Key of the scene."""
    query_frame: str
    """Identifier of the query frame within the scene."""
    context_frames: Tuple[str, ...]
    """Identifiers of the context frames."""

    def to(self, device: torch.device | str) -> TrainingExample:
        """The example with every tensor on ``device``."""
        return replace(self, **{name: _to(value, device) for name, value in self._tensor_fields().items()})

    def pin_memory(self) -> TrainingExample:
        """The example with every tensor in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        return replace(self, **{name: _pin(value) for name, value in self._tensor_fields().items()})

    def _tensor_fields(self) -> Dict[str, object]:
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if isinstance(getattr(self, f.name), (Tensor, NDCCameras))
        }


def _to(value: Tensor | NDCCameras, device: torch.device | str) -> Tensor | NDCCameras:
    return value.to(device, non_blocking=True) if isinstance(value, Tensor) else value.to(device)


def _pin(value: Tensor | NDCCameras) -> Tensor | NDCCameras:
    if isinstance(value, Tensor):
        return value.pin_memory()
    tensors = (value.R, value.T, value.focal_length, value.principal_point)
    return NDCCameras(*(tensor.pin_memory() for tensor in tensors))


class QueryContextDataset(Dataset):
    """Map-style dataset indexed by :class:`SampleKey`; see the module docstring."""

    def __init__(
        self,
        scenes: SceneCollection,
        views: ViewSamplingConfig,
        seed: int,
        latent_cache: Optional[LatentCache] = None,
    ) -> None:
        self.scenes = scenes
        self.views = views
        self.seed = seed
        self.latent_cache = latent_cache

    def __len__(self) -> int:
        """Number of scenes (an epoch of :class:`SceneStream` visits each once)."""
        return len(self.scenes)

    def choose_views(self, key: SampleKey) -> Tuple[int, Tuple[int, ...], Tuple[int, ...]]:
        """(query, context, pool) frame indices of the example ``key`` (module docstring, steps 1–3)."""
        rng = np.random.default_rng(example_seed(self.seed, key.position, SEED_PURPOSE_VIEWS))
        num_frames = len(self.scenes.frame_ids(key.scene))
        pool = rng.permutation(num_frames)[: self.views.frames_per_scene]
        query = int(pool[rng.integers(len(pool))])
        low, high = self.views.context_views
        count = int(rng.integers(low, high + 1))
        candidates = pool if self.views.context_may_include_query else pool[pool != query]
        context = candidates[rng.permutation(len(candidates))[:count]]
        return query, tuple(int(i) for i in context), tuple(int(i) for i in pool)

    def __getitem__(self, key: SampleKey) -> TrainingExample:
        query, context, pool = self.choose_views(key)
        loaded: Dict[int, LoadedFrame] = {}
        for frame in (query, *context):
            if frame not in loaded:
                loaded[frame] = self.scenes.load(key.scene, frame)
        frames = [loaded[query], *(loaded[i] for i in context)]
        cameras = (
            NDCCameras(
                R=torch.stack([f.R for f in frames]),
                T=torch.stack([f.T for f in frames]),
                focal_length=torch.stack([f.focal_length for f in frames]),
                principal_point=torch.stack([f.principal_point for f in frames]),
            )
            .relative_to(0)
            .to(torch.float32)
        )  # in float64 first: the composition stays exact to float32

        # d̄: mean distance of the pool's camera centres from the world origin, in the world frame
        depth_center = float(np.linalg.norm(self.scenes.camera_centers(key.scene, pool), axis=-1).mean())

        scene_key = self.scenes.scene_keys[key.scene]
        frame_ids = self.scenes.frame_ids(key.scene)
        latent = None if self.latent_cache is None else self.latent_cache.read(scene_key, frame_ids[query])
        return TrainingExample(
            query_image=loaded[query].image,
            query_valid=loaded[query].valid,
            context_images=torch.stack([loaded[i].image for i in context]),
            query_camera=cameras[0],
            context_cameras=cameras[1:],
            depth_center=depth_center,
            query_latent=latent,
            position=key.position,
            scene=scene_key,
            query_frame=frame_ids[query],
            context_frames=tuple(frame_ids[i] for i in context),
        )


class SceneStream(Sampler):
    """Endless stream of :class:`SampleKey` for one process (module docstring)."""

    def __init__(self, num_scenes: int, seed: int, start: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        if num_scenes < 1:
            raise ValueError("a SceneStream needs at least one scene")
        self.num_scenes = num_scenes
        self.seed = seed
        self.start = start
        self.num_replicas = num_replicas
        self.rank = rank

    def __iter__(self) -> Iterator[SampleKey]:
        position = self.start + self.rank
        epoch, order = -1, np.empty(0, dtype=np.int64)
        while True:
            position_epoch, within = divmod(position, self.num_scenes)
            if position_epoch != epoch:
                epoch = position_epoch
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_scenes)
            yield SampleKey(scene=int(order[within]), position=position)
            position += self.num_replicas
