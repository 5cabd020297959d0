"""Options of ``sf-train-teacher``: what to train on, how, and where to write it.

Defaults are the authors' recipe (docs/method.md#teacher-training, their ``train.py``): one scene per
process and step; one query and 2–5 context views drawn from a pool of frames of that scene; the
query latent repeated 12× with independent t and noise; condition dropout 10 %; P2 weighting;
valid-region masking; the EFT colour loss added (joint training); Adam, lr 5e-5, halved every
50k steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Tuple

from sparsefusion_ns.teacher.bundle import TeacherConfig
from sparsefusion_ns.utils.config_dicts import config_from_dict, config_to_dict


@dataclass
class DataConfig:
    """Where the training scenes come from and how their frames are preprocessed."""

    kind: Literal["co3d", "nerfstudio"] = "co3d"
    """``co3d``: sequences of CO3Dv2 categories. ``nerfstudio``: a folder of nerfstudio-format scenes
    (``<root>/<scene>/transforms.json``, or ``<root>/transforms.json`` for a single scene)."""
    root: Path = Path("data/co3d")
    """CO3Dv2 root (the folder holding one folder per category), or the folder of nerfstudio scenes."""
    categories: Tuple[str, ...] = ("hydrant",)
    """CO3D only: categories whose sequences are pooled (the authors train one teacher per category)."""
    subset: str = "fewview_train"
    """CO3D only: set list the frames come from (``set_lists/set_lists_<subset>.json``)."""
    split: str = "train"
    """CO3D only: split of that set list whose frames are used."""
    scale_factor: float = 1.0
    """nerfstudio only: multiply camera positions by this. The EFT samples depths d̄ ± 5 world units
    (d̄: mean camera distance from the world origin), a range made for CO3D's scale."""
    apply_mask: bool = True
    """Multiply every image by its foreground mask (black background, as the released teachers);
    False trains a teacher on unmasked images. (nerfstudio frames without a mask count as all
    foreground; CO3D frames without one are not used.)"""
    mask_threshold: float = 0.4
    """Foreground probability above which a pixel belongs to the object's crop box."""
    box_context: float = 0.3
    """Relative growth of the crop box around the mask (0.3: 15 % on every side)."""

    @classmethod
    def of_teacher(cls, provenance: Mapping[str, Any]) -> DataConfig:
        """The data settings a teacher was trained with: ``sf-train-teacher`` records them in its
        folder's provenance (``teacher_config.json``); other teachers (``sf-convert-teacher``: the
        authors' CO3D teachers) were trained with the defaults."""
        return config_from_dict(cls, provenance.get("data") or {}, unknown="ignore")


@dataclass
class ViewSamplingConfig:
    """How one training example is drawn from a scene."""

    frames_per_scene: int = 10
    """Frames drawn at random from the scene per example; the query and context come from them and
    the EFT depth range is centred on their mean camera distance. The authors' train.py draws 10
    (their loader's default is 20; docs/method.md#training-batch)."""
    context_views: Tuple[int, int] = (2, 5)
    """Inclusive range of the number of context views, drawn uniformly per example. (The authors'
    ``torch.randint(2, 5)`` draws 2–4.)"""
    context_may_include_query: bool = True
    """Draw the context from all pool frames, so it may contain the query itself (as the authors);
    False draws it from the other frames only."""

    def __post_init__(self) -> None:
        low, high = self.context_views
        if not 1 <= low <= high:
            raise ValueError(f"context_views={self.context_views} must satisfy 1 <= min <= max")
        available = self.frames_per_scene - (0 if self.context_may_include_query else 1)
        if high > available:
            raise ValueError(
                f"up to {high} context views cannot be drawn from frames_per_scene={self.frames_per_scene}"
                + ("" if self.context_may_include_query else " frames without the query")
            )


@dataclass
class LossConfig:
    """The joint objective: diffusion ε-MSE + EFT colour loss (docs/method.md#vldm-objective and #teacher-training)."""

    diffusion_repeats: int = 12
    """Copies of the query latent per example, each with its own t, noise and condition dropout."""
    t_max: float = 0.999
    """Training times are drawn from U(0, t_max)."""
    eft_weight: float = 1.0
    """Weight of the EFT colour loss in the joint loss (the authors add it with weight 1)."""
    huber_delta: float = 0.1
    """δ of the pseudo-Huber colour loss sqrt(1 + (x − y)²/δ²)·δ − δ."""
    valid_threshold: float = 0.6
    """A latent-resolution cell is inside the valid region when the bilinearly downsampled valid
    mask exceeds this."""


@dataclass
class VAEStageConfig:
    """``--stage vae``: train the autoencoder itself (when no pretrained VAE fits the teacher).

    The LDM recipe (Rombach et al. 2022, their ``autoencoder_kl`` configs) without its perceptual
    and adversarial terms: per image, the L1 reconstruction error summed over pixels plus
    ``kl_weight`` times the KL divergence of the posterior from N(0, I), decoding a posterior
    *sample* during training. Afterwards the latent scale is set as LDM's ``scale_by_std`` does:
    ``scaling_factor = 1 / std(z)`` over training frames, so the VLDM sees unit-variance latents.
    """

    batch_size: int = 16
    """Images per optimiser step and process."""
    learning_rate: float = 2e-4
    """Adam learning rate (the stage ignores the top-level ``learning_rate`` of the joint recipe)."""
    kl_weight: float = 1e-6
    """Weight of the KL term against the per-image reconstruction sum (LDM's kl-f4/kl-f8 value)."""
    reconstruction_loss: Literal["l1", "l2"] = "l1"
    """Per-value reconstruction error summed over the image: ``l1`` (LDM) or ``l2``. Without LDM's
    perceptual and adversarial terms, colour is slow to appear under L1 (docs/mini_teacher.md)."""
    scale_frames: int = 512
    """Training frames whose posterior means measure the latent scale."""
    eval_subset: str = "fewview_test"
    """CO3D only: set list whose ``test`` split (instances never trained on) measures the
    reconstruction PSNR at the end; skipped when the category has no such set list."""
    eval_frames: int = 256
    """At most this many evaluation frames (evenly spread over the list)."""


@dataclass
class TeacherTrainingConfig:
    """Train a SparseFusion teacher (EFT + VLDM) and write a teacher folder ``sparsefusion`` loads."""

    output: Path = Path("outputs/teacher_training")
    """Run folder: checkpoints/, tensorboard/, samples/ and, at the end, teacher/."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training scenes."""
    views: ViewSamplingConfig = field(default_factory=ViewSamplingConfig)
    """Query and context views of one example."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The joint objective."""
    vae: Optional[Path] = None
    """The frozen Stable Diffusion v1 VAE: an SD v1 .ckpt/.safetensors file, a local diffusers VAE
    folder, or a teacher folder (its vae.safetensors). Default: the VAE of ``init_teacher``."""
    init_teacher: Optional[Path] = None
    """Start from the EFT and UNet of this teacher folder (and use its architecture), e.g. the result
    of an ``--stage eft`` run or a converted released teacher. Default: random initialisation."""
    architecture: Optional[Literal["full", "mini", "tiny"]] = None
    """Teacher architecture when starting from scratch: ``full`` (the released models, the default),
    ``mini`` (the released structure sized to train on a CPU, docs/mini_teacher.md) or ``tiny`` (a
    CPU-fast model with the same structure, for tests and smoke runs)."""
    stage: Literal["joint", "eft", "vldm", "vae"] = "joint"
    """``joint``: EFT and UNet trained together (the authors). ``eft``: the EFT alone on its colour loss.
    ``vldm``: the UNet alone, conditioned on a frozen EFT (in eval mode) from ``init_teacher``.
    ``vae``: the architecture's autoencoder on the training frames (see ``vae_stage``); it writes
    ``<output>/vae``, a diffusers folder that later stages take as ``--vae``."""
    vae_stage: VAEStageConfig = field(default_factory=VAEStageConfig)
    """Options of ``--stage vae``."""
    max_steps: int = 200_000
    """Optimiser steps. Resuming a checkpoint at or beyond this step only writes the teacher folder."""
    learning_rate: float = 5e-5
    """Adam learning rate of both networks."""
    lr_decay_every: int = 50_000
    """The learning rate is multiplied by ``lr_decay_factor`` every this many steps."""
    lr_decay_factor: float = 0.5
    """Step decay factor γ."""
    max_grad_norm: Optional[float] = None
    """Clip the global gradient norm to this (the authors do not clip)."""
    seed: int = 0
    """Seed of the data order, of every example's frames, times and noise, and of the initial weights."""
    mixed_precision: Optional[Literal["no", "fp16", "bf16"]] = None
    """Autocast precision of the forward pass (bf16 recommended on recent GPUs). None: what
    ``accelerate launch``/``accelerate config`` says, else ``no``."""
    cpu: bool = False
    """Train on the CPU even when a GPU is available."""
    num_workers: int = 4
    """Data-loading worker processes per training process."""
    latent_cache: Optional[Path] = None
    """Folder of pre-computed query latents (VAE encodings of every preprocessed frame), filled once
    before training and reused by later runs with the same VAE and preprocessing."""
    log_every: int = 50
    """Write losses, learning rate and speed to tensorboard every this many steps."""
    sample_every: int = 1000
    """Write a sample grid (context views, ground truth, EFT colour, VLDM sample) every this many
    steps; 0 disables."""
    sample_steps: int = 10
    """DDIM steps of the VLDM sample in the grid."""
    checkpoint_every: int = 1000
    """Write a resumable checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 3
    """Keep only the newest this many checkpoints; 0 keeps all."""
    resume: bool = False
    """Continue from the newest checkpoint in ``output``/checkpoints."""
    resume_from: Optional[Path] = None
    """Continue from this checkpoint folder."""
    progress: bool = True
    """Show a progress bar with the loss and steps/s."""
    tensorboard: bool = True
    """Log to ``output``/tensorboard (if tensorboard is installed)."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "lr_decay_every", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.sample_every < 0 or self.keep_checkpoints < 0 or self.num_workers < 0:
            raise ValueError("sample_every, keep_checkpoints and num_workers must not be negative")
        if self.stage == "vae" and self.init_teacher is not None:
            raise ValueError("--stage vae trains an autoencoder from scratch: drop --init-teacher, set --architecture")
        if self.stage == "vldm" and self.init_teacher is None:
            raise ValueError("--stage vldm trains the UNet on a frozen EFT: give that EFT with --init-teacher")

    def teacher_architecture(self) -> TeacherConfig:
        """The architecture to train when not starting from ``init_teacher``."""
        if self.architecture == "tiny":
            return TeacherConfig.tiny()
        return TeacherConfig.mini() if self.architecture == "mini" else TeacherConfig.full()

    def to_json_dict(self) -> dict[str, Any]:
        """All options as JSON-ready values (paths as strings), for checkpoints and provenance."""
        return json.loads(json.dumps(config_to_dict(self), default=str))
