"""An on-disk cache of the frozen VAE's latents of every training frame, filled once.

The VLDM's target is the VAE latent of the query view, ``z = mean(q(z | 2x − 1)) · 0.18215``
(docs/method.md#vae). The VAE never changes during training, so the latent of every preprocessed frame
can be computed once instead of at every step. Layout::

    <folder>/cache_info.json                 what the latents were made with (see fingerprint)
    <folder>/<scene key>.safetensors         one float32 latent (c, g, g) per frame id

A folder made with another VAE or other preprocessing is refused rather than silently reused:
``cache_info.json`` records the VAE weights' SHA-256, the image size and the preprocessing options.
Scenes already present are skipped, so an interrupted build continues where it stopped. With
several processes, each encodes a share of the scenes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping

import safetensors
import safetensors.torch
import torch
from accelerate import Accelerator
from jaxtyping import Float
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sparsefusion_ns.teacher.vae import FrozenVAE
from sparsefusion_ns.teacher_training.config import DataConfig
from sparsefusion_ns.teacher_training.scenes import SceneCollection
from sparsefusion_ns.utils.atomic_files import atomic_path, write_text_atomically
from sparsefusion_ns.utils.summary import progress_bar

INFO_FILE = "cache_info.json"
"""Name of the file that records what a cache folder was made with."""
FORMAT_NAME = "sparsefusion-ns-latent-cache"
FORMAT_VERSION = 1


def vae_sha256(vae: FrozenVAE) -> str:
    """SHA-256 of the VAE's weights (names, shapes, dtypes and float32 values)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(vae.autoencoder.state_dict().items()):
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_fingerprint(vae: FrozenVAE, data: DataConfig, image_size: int) -> Dict[str, Any]:
    """Everything a cached latent depends on."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "vae_sha256": vae_sha256(vae),
        "image_size": image_size,
        "apply_mask": data.apply_mask,
        "mask_threshold": data.mask_threshold,
        "box_context": data.box_context,
    }


class LatentCache:
    """Read access to a cache folder whose ``cache_info.json`` matches ``fingerprint``."""

    def __init__(self, folder: Path, fingerprint: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.fingerprint = dict(fingerprint)

    def path(self, scene_key: str) -> Path:
        """File holding the latents of one scene."""
        return self.folder / f"{scene_key}.safetensors"

    def read(self, scene_key: str, frame_id: str) -> Float[Tensor, "c g g"]:
        """The cached latent of one frame."""
        path = self.path(scene_key)
        if not path.is_file():
            raise FileNotFoundError(f"latent cache {self.folder} has no file for scene {scene_key}; rebuild it")
        with safetensors.safe_open(path, framework="pt") as file:
            if frame_id not in file.keys():
                raise KeyError(f"latent cache file {path} lacks frame {frame_id}; delete the file to rebuild it")
            return file.get_tensor(frame_id)

    def has_scene(self, scene_key: str, frame_ids: List[str]) -> bool:
        """Whether the scene's file exists and holds every frame."""
        path = self.path(scene_key)
        if not path.is_file():
            return False
        with safetensors.safe_open(path, framework="pt") as file:
            return set(frame_ids) <= set(file.keys())

    def write(self, scene_key: str, latents: Mapping[str, Tensor]) -> None:
        """Write one scene's latents atomically (a temporary file renamed into place)."""
        path = self.path(scene_key)
        tensors = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in latents.items()}
        with atomic_path(path) as partial:
            safetensors.torch.save_file(tensors, partial)

    def check_info(self) -> bool:
        """Raise if the folder was made with something else; return whether ``cache_info.json`` exists."""
        path = self.folder / INFO_FILE
        if not path.is_file():
            return False
        found = json.loads(path.read_text())
        keys = set(found) | set(self.fingerprint)
        differences = sorted(key for key in keys if found.get(key) != self.fingerprint.get(key))
        if differences:
            raise ValueError(
                f"the latent cache {self.folder} was made with other settings (differing: {', '.join(differences)}); "
                "choose another --latent-cache folder or delete this one"
            )
        return True

    def write_info(self) -> None:
        """Record the fingerprint in ``cache_info.json``."""
        write_text_atomically(self.folder / INFO_FILE, json.dumps(self.fingerprint, indent=1) + "\n")


class _FrameImages(Dataset):
    """(scene, frame) → the preprocessed frame image, for encoding in batches with workers."""

    def __init__(self, scenes: SceneCollection, refs: List[tuple[int, int]]) -> None:
        self.scenes = scenes
        self.refs = refs

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> tuple[int, Float[Tensor, "3 s s"]]:
        scene, frame = self.refs[index]
        return index, self.scenes.load(scene, frame).image


@torch.no_grad()
def prepare_latent_cache(
    folder: Path,
    scenes: SceneCollection,
    vae: FrozenVAE,
    data: DataConfig,
    image_size: int,
    accelerator: Accelerator,
    num_workers: int = 4,
    batch_size: int = 16,
    progress: bool = True,
) -> LatentCache:
    """Check ``folder`` against this VAE and preprocessing, encode every missing scene, return the cache.

    Every process must call this (it synchronises them); each encodes every ``num_processes``-th
    missing scene. Encoding runs in float32, as the trainer's own ``vae.encode``. ``progress``: the
    main process shows a bar with an ETA over its frames.
    """
    cache = LatentCache(folder, cache_fingerprint(vae, data, image_size))
    exists = cache.check_info()
    accelerator.wait_for_everyone()
    if not exists and accelerator.is_main_process:
        cache.write_info()
    keys = scenes.scene_keys
    mine = range(len(keys))[accelerator.process_index :: accelerator.num_processes]
    missing = [s for s in mine if not cache.has_scene(keys[s], scenes.frame_ids(s))]
    refs = [(s, f) for s in missing for f in range(len(scenes.frame_ids(s)))]
    if refs:
        loader = DataLoader(_FrameImages(scenes, refs), batch_size=batch_size, num_workers=num_workers)
        pending: Dict[int, Dict[str, Tensor]] = {}
        bar = progress_bar(
            f"Encoding the latent cache ({len(missing)} scenes)", disable=not (progress and accelerator.is_main_process)
        )
        with bar:
            task = bar.add_task("latents", total=len(refs))
            for indices, images in loader:
                latents = vae.encode(images.to(accelerator.device)).cpu()
                for index, latent in zip(indices.tolist(), latents):
                    scene, frame = refs[index]
                    pending.setdefault(scene, {})[scenes.frame_ids(scene)[frame]] = latent
                    if len(pending[scene]) == len(scenes.frame_ids(scene)):
                        cache.write(keys[scene], pending.pop(scene))
                bar.advance(task, len(indices))
    accelerator.wait_for_everyone()
    return cache
