"""``sf-train-teacher --stage vae``: train the teacher's autoencoder on the training frames.

Stable Diffusion's VAE cannot be had offline, and a small teacher (``--architecture mini``) has its
own smaller one, so the autoencoder is trained here, before the EFT and VLDM (which then take its
folder as ``--vae``). The objective is LDM's KL-regularised autoencoder (:class:`VAEStageConfig`):
for images x ∈ [−1, 1] (``2·frame − 1``), posterior q(z|x) = N(μ, σ²), a sample z = μ + σ·ε and the
decoder's output x̂ = D(z)::

    loss = mean over the batch of ( Σ_pixels |x − x̂| + kl_weight · KL(q(z|x) ‖ N(0, I)) )

(``reconstruction_loss="l2"`` sums (x − x̂)² instead.)

Frames are the teacher's crops (masked, cropped around the mask, resized and padded: exactly what
the VLDM will encode). A step's images and noise are functions of (seed, step, process) only, so a
resumed run takes the same steps as an uninterrupted one (bit for bit on the CPU); checkpoints,
progress bar, tensorboard scalars and reconstruction grids are those of the other stages.

At the end it writes ``<output>/vae`` (a diffusers ``AutoencoderKL`` folder whose ``scaling_factor``
is ``1 / std(μ)`` over ``scale_frames`` training frames, LDM's ``scale_by_std``) and
``<output>/vae_report.json`` with that scale and the reconstruction PSNR of frames of instances never
trained on (the ``test`` split of ``eval_subset``).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from jaxtyping import Float
from rich.markup import escape
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.utils import make_grid

from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns import __version__
from sparsefusion_ns.data.co3d_annotations import Co3dFormatError
from sparsefusion_ns.metrics import psnr_from_mse
from sparsefusion_ns.teacher.vae import VAEConfig
from sparsefusion_ns.teacher_training.checkpoints import (
    checkpoint_folder,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from sparsefusion_ns.teacher_training.config import TeacherTrainingConfig
from sparsefusion_ns.teacher_training.datasets import example_seed
from sparsefusion_ns.teacher_training.lr_schedule import StepDecaySchedule
from sparsefusion_ns.teacher_training.progress_log import LossWindow, TrainingLogger
from sparsefusion_ns.teacher_training.scenes import SceneCollection, TrainingDataError, build_scenes
from sparsefusion_ns.utils.summary import print_summary

VAE_FOLDER = "vae"
"""The trained autoencoder, a diffusers folder, inside the run's output folder."""
REPORT_FILE = "vae_report.json"
"""Latent scale, reconstruction PSNR and provenance of the trained autoencoder."""
SEED_PURPOSE_VAE_BATCH = 10
"""``example_seed`` purpose of a step's frame choice."""
SEED_PURPOSE_VAE_NOISE = 11
"""``example_seed`` purpose of a step's posterior sample."""


class FrameDataset(Dataset):
    """Every frame of every scene, as the teacher sees it (an image in [0, 1], 3 × s × s)."""

    def __init__(self, scenes: SceneCollection) -> None:
        self.scenes = scenes
        self.index: List[Tuple[int, int]] = [
            (scene, frame) for scene in range(len(scenes)) for frame in range(len(scenes.frame_ids(scene)))
        ]
        if not self.index:
            raise TrainingDataError("the training data holds no frames")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position: int) -> Float[Tensor, "3 s s"]:
        return self.scenes.load(*self.index[position]).image


class StepBatches(Sampler):
    """The frame indices of each step from ``start_step`` on: ``batch_size`` draws (with replacement)
    from a generator seeded by (seed, global example position) — the same for any resume point."""

    def __init__(
        self, num_frames: int, batch_size: int, seed: int, start_step: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        self.num_frames, self.batch_size, self.seed = num_frames, batch_size, seed
        self.start_step, self.num_replicas, self.rank = start_step, num_replicas, rank

    def __iter__(self) -> Iterator[List[int]]:
        step = self.start_step
        while True:
            position = step * self.num_replicas + self.rank
            generator = torch.Generator().manual_seed(example_seed(self.seed, position, SEED_PURPOSE_VAE_BATCH))
            yield torch.randint(self.num_frames, (self.batch_size,), generator=generator).tolist()
            step += 1


class VAETrainingModel(nn.Module):
    """The autoencoder and its training objective (module docstring) in one ``forward``, so that
    DDP sees the computation that produces the gradients."""

    def __init__(self, autoencoder: AutoencoderKL, kl_weight: float, reconstruction_loss: str = "l1") -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.kl_weight = kl_weight
        self.reconstruction_loss = reconstruction_loss

    def forward(self, images: Float[Tensor, "b 3 s s"], epsilon: Float[Tensor, "b c g g"]) -> Dict[str, Tensor]:
        """The loss for frames in [0, 1] with the posterior sample's noise ``epsilon``, and its terms for logs."""
        x = 2.0 * images - 1.0
        posterior = self.autoencoder.encode(x).latent_dist
        reconstruction = self.autoencoder.decode(posterior.mean + posterior.std * epsilon.to(posterior.mean)).sample
        error = x - reconstruction
        l1_sum = error.abs().flatten(1).sum(dim=1).mean()
        rec_sum = l1_sum if self.reconstruction_loss == "l1" else error.pow(2).flatten(1).sum(dim=1).mean()
        kl = posterior.kl().mean()
        return {"loss": rec_sum + self.kl_weight * kl, "l1_per_value": l1_sum.detach() / x[0].numel(),
                "kl": kl.detach()}  # fmt: skip


@torch.no_grad()
def posterior_means(autoencoder: AutoencoderKL, images: Float[Tensor, "b 3 s s"]) -> Tensor:
    """μ of q(z | 2·images − 1)."""
    return autoencoder.encode(2.0 * images - 1.0).latent_dist.mean


@torch.no_grad()
def reconstruct(autoencoder: AutoencoderKL, images: Float[Tensor, "b 3 s s"]) -> Float[Tensor, "b 3 s s"]:
    """Decode the posterior mean, back in [0, 1] (what the teacher's ``FrozenVAE`` does)."""
    return ((autoencoder.decode(posterior_means(autoencoder, images)).sample + 1.0) / 2.0).clamp(0.0, 1.0)


def _evenly_spread(total: int, wanted: int) -> List[int]:
    if total <= wanted:
        return list(range(total))
    return [round(i * (total - 1) / (wanted - 1)) for i in range(wanted)] if wanted > 1 else [0]


def _batches(dataset: Dataset, positions: List[int], batch_size: int, device: torch.device) -> Iterator[Tensor]:
    for start in range(0, len(positions), batch_size):
        yield torch.stack([dataset[p] for p in positions[start : start + batch_size]]).to(device)


def measure_latent_scale(
    autoencoder: AutoencoderKL, dataset: Dataset, frames: int, batch_size: int, device: torch.device
) -> float:
    """LDM's ``scale_by_std``: 1 / std of the posterior means of up to ``frames`` frames."""
    means = [posterior_means(autoencoder, batch) for batch in
             _batches(dataset, _evenly_spread(len(dataset), frames), batch_size, device)]  # fmt: skip
    return float(1.0 / torch.cat(means).flatten().std())


def reconstruction_psnr(
    autoencoder: AutoencoderKL, dataset: Dataset, frames: int, batch_size: int, device: torch.device
) -> Dict[str, float]:
    """Mean and standard deviation over frames of the PSNR (dB, data range 1) of their reconstructions."""
    values = []
    for batch in _batches(dataset, _evenly_spread(len(dataset), frames), batch_size, device):
        mse = (reconstruct(autoencoder, batch) - batch).pow(2).flatten(1).mean(dim=1)
        values.extend(psnr_from_mse(mse).tolist())
    tensor = torch.tensor(values)
    return {"psnr_mean": float(tensor.mean()), "psnr_std": float(tensor.std()) if len(values) > 1 else 0.0,
            "frames": len(values)}  # fmt: skip


def _evaluation_scenes(config: TeacherTrainingConfig, image_size: int) -> Optional[SceneCollection]:
    if config.data.kind != "co3d":
        return None
    try:
        return build_scenes(replace(config.data, subset=config.vae_stage.eval_subset, split="test"), image_size)
    except (Co3dFormatError, TrainingDataError, FileNotFoundError) as error:
        CONSOLE.print(f"[bold yellow]No held-out reconstruction PSNR:[/] {escape(str(error))}")
        return None


def write_vae_folder(autoencoder: AutoencoderKL, folder: Path, scaling_factor: float) -> Path:
    """Save ``autoencoder`` with ``scaling_factor`` as a diffusers folder, atomically (sibling, rename)."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    autoencoder.register_to_config(scaling_factor=scaling_factor)
    autoencoder.save_pretrained(staging, safe_serialization=True)
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder


def read_vae_report(output: Path) -> Dict[str, Any]:
    """The ``vae_report.json`` of a ``--stage vae`` run folder."""
    return json.loads((Path(output) / REPORT_FILE).read_text())


def train_vae(config: TeacherTrainingConfig) -> Dict[str, Any]:
    """Run (or continue) the VAE stage; returns the report it writes (see the module docstring)."""
    options = config.vae_stage
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu)
    main, device = accelerator.is_main_process, accelerator.device
    output = Path(config.output)
    resume = resolve_resume(output, config.resume, config.resume_from)
    architecture = config.teacher_architecture()
    vae_config: VAEConfig = architecture.vae
    image_size = architecture.eft.image_size
    dataset = FrameDataset(build_scenes(config.data, image_size))

    torch.manual_seed(config.seed)  # the same initial weights on every process
    training_model = VAETrainingModel(
        vae_config.build_autoencoder(), options.kl_weight, options.reconstruction_loss
    ).to(device)
    optimizer = torch.optim.Adam(training_model.parameters(), lr=options.learning_rate)
    grid = image_size // vae_config.downsampling_factor
    latent_shape = (options.batch_size, vae_config.latent_channels, grid, grid)
    schedule = StepDecaySchedule(optimizer, config.lr_decay_every, config.lr_decay_factor)
    set_seed(config.seed, device_specific=True)

    def trainer_state() -> Dict[str, Any]:
        return {
            "stage": "vae",
            "step": step,
            "num_processes": accelerator.num_processes,
            "lr_schedule": schedule.state_dict(),
            "vae_config": vae_config.to_dict(),
            "training_config": config.to_json_dict(),
        }

    step = 0
    if resume is not None:
        state, warning = load_checkpoint(resume, training_model, optimizer, accelerator.process_index)
        if state.get("stage") != "vae" or state.get("vae_config") != vae_config.to_dict():
            raise ValueError(f"checkpoint {resume} is not a --stage vae checkpoint of this architecture's VAE")
        schedule.load_state_dict(state["lr_schedule"])
        step = int(state["step"])
        if main:
            CONSOLE.print(f"Resumed from {escape(str(resume))} at step {step}")
        if warning:
            CONSOLE.print(f"[bold yellow]Warning:[/] {escape(warning)}")

    model, optimizer = accelerator.prepare(training_model, optimizer)
    unwrapped: AutoencoderKL = accelerator.unwrap_model(model).autoencoder
    if step < config.max_steps:
        sampler = StepBatches(
            len(dataset), options.batch_size, config.seed, step, accelerator.num_processes, accelerator.process_index
        )
        loader = DataLoader(
            dataset, batch_sampler=sampler, num_workers=config.num_workers, pin_memory=device.type == "cuda"
        )
        logger = TrainingLogger(config, accelerator, step, "samples/truth_reconstruction") if main else None
        previews = torch.stack([dataset[p] for p in _evenly_spread(len(dataset), 8)]) if main else None
        window = LossWindow()  # the loss terms since the last log
        iterator = iter(loader)
        model.train()
        try:
            while step < config.max_steps:
                started = time.perf_counter()
                images = next(iterator).to(device)
                position = step * accelerator.num_processes + accelerator.process_index
                lr = schedule.learning_rates()[0]
                noise = torch.Generator().manual_seed(example_seed(config.seed, position, SEED_PURPOSE_VAE_NOISE))
                epsilon = torch.randn(latent_shape, generator=noise).to(device)
                with accelerator.autocast():
                    losses = model(images, epsilon)
                accelerator.backward(losses["loss"])
                if config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                values = {name: value.detach().float() for name, value in losses.items()}
                if not all(math.isfinite(float(v)) for v in values.values()):
                    raise FloatingPointError(
                        f"the VAE loss is not finite at step {step} ({ {k: float(v) for k, v in values.items()} }); "
                        f"lower --vae-stage.learning-rate (now {options.learning_rate}) and resume from the last checkpoint"
                    )
                window.add(values)
                if logger is not None:
                    logger.progress_step({"step": step, "loss": float(values["l1_per_value"]),
                                          "seconds": time.perf_counter() - started})  # fmt: skip
                if step % config.log_every == 0 or step == config.max_steps:
                    means = window.means(accelerator)
                    if logger is not None:
                        logger.scalars(step, means, lr)
                if logger is not None and config.sample_every and step % config.sample_every == 0:
                    model.eval()
                    truth = previews.to(device)
                    pairs = torch.cat([truth, reconstruct(unwrapped, truth)]).float().cpu()
                    logger.image(
                        step, make_grid(pairs, nrow=len(truth), padding=1)
                    )  # row 1 truth, row 2 reconstruction
                    model.train()
                if step % config.checkpoint_every == 0 or step == config.max_steps:
                    save_checkpoint(accelerator, checkpoint_folder(output, step), accelerator.unwrap_model(model), optimizer,
                                    trainer_state(), config.keep_checkpoints)  # fmt: skip
        finally:
            del iterator
            if logger is not None:
                logger.close()

    report: Dict[str, Any] = {"steps": step}
    if main:
        unwrapped.eval()
        scale = measure_latent_scale(unwrapped, dataset, options.scale_frames, options.batch_size, device)
        folder = write_vae_folder(unwrapped, output / VAE_FOLDER, scale)
        held_out = _evaluation_scenes(config, image_size)
        report = {
            "trained_by": f"sparsefusion-ns {__version__} sf-train-teacher --stage vae",
            "steps": step,
            "vae_config": replace(vae_config, scaling_factor=scale).to_dict(),
            "scaling_factor": scale,
            "training_frames": len(dataset),
            "train_reconstruction": reconstruction_psnr(
                unwrapped, dataset, options.eval_frames, options.batch_size, device
            ),  # fmt: skip
            "held_out_reconstruction": None,
            "training_config": config.to_json_dict(),
        }
        if held_out is not None:
            report["held_out_reconstruction"] = reconstruction_psnr(
                unwrapped, FrameDataset(held_out), options.eval_frames, options.batch_size, device
            )
        (output / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
        held = report["held_out_reconstruction"]
        psnr = f"{report['train_reconstruction']['psnr_mean']:.2f} dB on training frames"
        if held is not None:
            psnr += f", {held['psnr_mean']:.2f} ± {held['psnr_std']:.2f} dB on held-out instances"
        rows = [
            ("VAE folder", folder),
            ("Report", output / REPORT_FILE),
            ("Stage", f"vae, step {step} of {config.max_steps}"),
            ("Scaling factor", f"{scale:.4f}"),
            ("Reconstruction PSNR", psnr),
        ]
        rows += [(label, output / name) for label, name in (("Checkpoints", "checkpoints"), ("Samples", "samples"))
                 if (output / name).exists()]  # fmt: skip
        print_summary("VAE Training Finished", rows)
    accelerator.wait_for_everyone()
    return report
