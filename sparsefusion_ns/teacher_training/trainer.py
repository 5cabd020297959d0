"""The teacher training loop, on one CPU or GPU, several GPUs or several machines (``accelerate``).

Every process trains on one example per step (docs/method.md#training-batch: one scene per GPU);
DDP averages the gradients, so N processes take N examples per optimiser step. One step:

1. the next :class:`~.datasets.SampleKey` of this process's :class:`~.datasets.SceneStream`
   (loaded by DataLoader workers);
2. the query latent z_0: from the latent cache, or ``vae.encode(query image)`` (frozen, float32);
3. the diffusion draws (t, ε, condition dropout) from a generator seeded by the example's position;
4. ``loss = L_diff + w · L_eft`` from :class:`~.model.TeacherTrainingModel` (the UNet under
   autocast when mixed precision is on), backward, Adam step, learning-rate step decay.

Around it: a rich progress bar (loss, steps/s), tensorboard scalars every ``log_every`` steps
(averaged over the window and over processes), a sample grid every ``sample_every`` steps,
checkpoints every ``checkpoint_every`` steps, and finally the teacher folder
``<output>/teacher`` that ``Teacher.from_pretrained`` (and so the ``sparsefusion`` method) loads.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.markup import escape
from torch.utils.data import DataLoader

from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns import __version__
from sparsefusion_ns.teacher.bundle import CONFIG_FILE, TeacherConfig, read_teacher_metadata, write_teacher_folder
from sparsefusion_ns.teacher.convert import read_vae_weights
from sparsefusion_ns.teacher.vae import FrozenVAE
from sparsefusion_ns.teacher_training.checkpoints import (
    checkpoint_folder,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from sparsefusion_ns.teacher_training.config import TeacherTrainingConfig
from sparsefusion_ns.teacher_training.datasets import (
    SEED_PURPOSE_DIFFUSION,
    QueryContextDataset,
    SampleKey,
    SceneStream,
    example_seed,
)
from sparsefusion_ns.teacher_training.latent_cache import prepare_latent_cache
from sparsefusion_ns.teacher_training.losses import draw_diffusion_inputs
from sparsefusion_ns.teacher_training.lr_schedule import StepDecaySchedule
from sparsefusion_ns.teacher_training.model import TeacherTrainingModel
from sparsefusion_ns.teacher_training.previews import preview_grid
from sparsefusion_ns.teacher_training.progress_log import LossWindow, TrainingLogger
from sparsefusion_ns.teacher_training.scenes import build_scenes
from sparsefusion_ns.teacher_training.vae_stage import train_vae
from sparsefusion_ns.utils.summary import print_summary

PREVIEW_SEED = 1234
"""Seed of the sample grids' noise (the same noise at every grid, so grids compare over time)."""


@dataclass
class TrainingRun:
    """What :func:`train` did (values of the main process)."""

    step: int
    """Steps completed by the run, including those before a resume."""
    history: List[Dict[str, float]] = field(default_factory=list)
    """One record per step taken by this call: step, lr, loss terms, seconds."""
    checkpoints: List[Path] = field(default_factory=list)
    """Checkpoints written by this call."""
    teacher: Optional[Path] = None
    """The teacher folder written at the end."""


StateDicts = Dict[str, Dict[str, torch.Tensor]]


def resolve_teacher(config: TeacherTrainingConfig) -> Tuple[TeacherConfig, Optional[StateDicts]]:
    """(architecture, initial EFT/UNet state dicts or None) from ``init_teacher`` or ``architecture``."""
    if config.init_teacher is None:
        architecture = config.teacher_architecture()
        declared = _declared_latent_scale(config.vae)
        if declared is not None:  # e.g. a --stage vae folder: its measured scale is the teacher's
            architecture = replace(architecture, vae=replace(architecture.vae, scaling_factor=declared))
        return architecture, None
    folder = Path(config.init_teacher)
    teacher_config = TeacherConfig.from_dict(read_teacher_metadata(folder)["config"])
    if config.architecture is not None and config.teacher_architecture() != teacher_config:
        raise ValueError(
            f"--architecture {config.architecture} differs from the architecture of --init-teacher {folder}; "
            "drop --architecture to train the init teacher's"
        )
    weights = {name: safetensors.torch.load_file(folder / f"{name}.safetensors") for name in ("eft", "unet")}
    return teacher_config, weights


def _declared_latent_scale(vae: Optional[Path]) -> Optional[float]:
    """The ``scaling_factor`` a diffusers VAE folder declares in its config.json (None otherwise)."""
    if vae is None or not (Path(vae) / "config.json").is_file() or (Path(vae) / CONFIG_FILE).is_file():
        return None
    value = json.loads((Path(vae) / "config.json").read_text()).get("scaling_factor")
    return None if value is None else float(value)


def load_vae(config: TeacherTrainingConfig, teacher_config: TeacherConfig) -> FrozenVAE:
    """The frozen VAE from ``--vae`` (SD v1 file, diffusers folder or teacher folder) or ``init_teacher``."""
    source = config.vae if config.vae is not None else config.init_teacher
    if source is None:
        raise ValueError(
            "no VAE given: pass --vae (a Stable Diffusion v1 .ckpt/.safetensors file, a diffusers VAE folder "
            "or a teacher folder) or --init-teacher"
        )
    source = Path(source)
    vae = FrozenVAE(teacher_config.vae)
    if (source / CONFIG_FILE).is_file():  # a teacher folder
        folder_vae = TeacherConfig.from_dict(read_teacher_metadata(source)["config"]).vae
        if folder_vae != teacher_config.vae:
            raise ValueError(f"the VAE of teacher folder {source} has another architecture than the teacher trained")
        vae.load_diffusers_state_dict(safetensors.torch.load_file(source / "vae.safetensors"), str(source))
    else:
        vae.load_diffusers_state_dict(read_vae_weights(source, teacher_config.vae), str(source))
    return vae


def train(config: TeacherTrainingConfig) -> TrainingRun:
    """Train (or continue training) a teacher as ``config`` says; see the module docstring.

    ``--stage vae`` trains the autoencoder instead (:mod:`.vae_stage`)."""
    if config.stage == "vae":
        report = train_vae(config)
        return TrainingRun(step=int(report.get("steps", config.max_steps)))
    session_started = time.perf_counter()
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu)
    main = accelerator.is_main_process
    device = accelerator.device
    output = Path(config.output)
    resume = resolve_resume(config.output, config.resume, config.resume_from)
    teacher_config, init_weights = resolve_teacher(config)
    image_size = teacher_config.eft.image_size

    vae = load_vae(config, teacher_config).to(device)
    scenes = build_scenes(config.data, image_size)
    trains_unet = config.stage in ("joint", "vldm")
    cache = None
    if config.latent_cache is not None and trains_unet:
        if main:
            CONSOLE.print(f"Filling the latent cache {escape(str(config.latent_cache))} (once) …")
        cache = prepare_latent_cache(
            config.latent_cache,
            scenes,
            vae,
            config.data,
            image_size,
            accelerator,
            config.num_workers,
            progress=config.progress,
        )
    dataset = QueryContextDataset(scenes, config.views, config.seed, cache)

    torch.manual_seed(config.seed)  # the same initial weights on every process
    model = TeacherTrainingModel(teacher_config, config.stage, config.loss)
    if init_weights is not None and resume is None:
        model.eft.load_state_dict(init_weights["eft"])
        model.unet.load_state_dict(init_weights["unet"])
    model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
    schedule = StepDecaySchedule(optimizer, config.lr_decay_every, config.lr_decay_factor)
    set_seed(config.seed, device_specific=True)  # transformer dropout differs between processes

    step, examples_seen, state = 0, 0, None
    if resume is not None:
        state, warning = load_checkpoint(resume, model, optimizer, accelerator.process_index)
        if state["teacher_config"] != _json(teacher_config.to_dict()):
            raise ValueError(f"checkpoint {resume} trains another teacher architecture than this run's")
        schedule.load_state_dict(state["lr_schedule"])
        step, examples_seen = int(state["step"]), int(state["examples_seen"])
        if main:
            CONSOLE.print(f"Resumed from {escape(str(resume))} at step {step}")
        if warning:
            CONSOLE.print(f"[bold yellow]Warning:[/] {escape(warning)}")

    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped: TeacherTrainingModel = accelerator.unwrap_model(model)
    if accelerator.scaler is not None and state is not None and state.get("grad_scaler"):
        accelerator.scaler.load_state_dict(state["grad_scaler"])  # fp16 loss scale
    run = TrainingRun(step=step)

    def trainer_state() -> Dict[str, Any]:
        return {
            "step": step,
            "examples_seen": examples_seen,
            "num_processes": accelerator.num_processes,
            "lr_schedule": schedule.state_dict(),
            "grad_scaler": None if accelerator.scaler is None else accelerator.scaler.state_dict(),
            "teacher_config": _json(teacher_config.to_dict()),
            "training_config": config.to_json_dict(),
        }

    if step < config.max_steps:
        stream = SceneStream(
            len(dataset), config.seed, examples_seen, accelerator.num_processes, accelerator.process_index
        )
        loader = DataLoader(
            dataset,
            sampler=stream,
            batch_size=None,  # one example per process and step
            num_workers=config.num_workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG untouched
        )
        logger = TrainingLogger(config, accelerator, step) if main else None
        preview_example = dataset[SampleKey(scene=0, position=0)] if main and config.sample_every else None
        window = LossWindow()  # the loss terms since the last log
        iterator = iter(loader)
        try:
            while step < config.max_steps:
                started = time.perf_counter()
                example = next(iterator).to(device)
                latent, draws = None, None
                if trains_unet:
                    latent = example.query_latent
                    if latent is None:
                        with torch.no_grad():
                            latent = vae.encode(example.query_image[None])[0]
                    generator = torch.Generator().manual_seed(
                        example_seed(config.seed, example.position, SEED_PURPOSE_DIFFUSION)
                    )
                    draws = draw_diffusion_inputs(
                        config.loss.diffusion_repeats,
                        tuple(latent.shape),
                        config.loss.t_max,
                        teacher_config.unet.cond_drop_prob,
                        generator,
                    ).to(device)
                lr = schedule.learning_rates()[0]
                losses = model(example, latent, draws)
                accelerator.backward(losses["loss"])
                if config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                examples_seen += accelerator.num_processes

                values = {name: value.detach().float() for name, value in losses.items()}
                window.add(values)
                record = {"step": step, "lr": lr, **{name: float(v) for name, v in values.items()}}
                record["seconds"] = time.perf_counter() - started
                run.history.append(record)
                if logger is not None:
                    logger.progress_step(record)

                if step % config.log_every == 0 or step == config.max_steps:
                    means = window.means(accelerator)
                    if logger is not None:
                        logger.scalars(step, means, lr)
                if logger is not None and config.sample_every and step % config.sample_every == 0:
                    grid = preview_grid(
                        unwrapped, vae, preview_example.to(device), config.sample_steps, config.loss.t_max, PREVIEW_SEED
                    )
                    logger.image(step, grid)
                if step % config.checkpoint_every == 0 or step == config.max_steps:
                    folder = save_checkpoint(
                        accelerator, checkpoint_folder(output, step), unwrapped, optimizer, trainer_state(),
                        config.keep_checkpoints,
                    )  # fmt: skip
                    run.checkpoints.append(folder)
        finally:
            del iterator
            if logger is not None:
                logger.close()

    run.step = step
    if main:
        provenance = {
            "trained_by": f"sparsefusion-ns {__version__} sf-train-teacher",
            "steps": step,
            "stage": config.stage,
            "data": config.to_json_dict()["data"],
            "vae": str(config.vae if config.vae is not None else config.init_teacher),
            "init_teacher": None if config.init_teacher is None else str(config.init_teacher),
        }
        state_dicts = {
            "eft": unwrapped.eft.state_dict(),
            "unet": unwrapped.unet.state_dict(),
            "vae": vae.autoencoder.state_dict(),
        }
        run.teacher = write_teacher_folder(output / "teacher", teacher_config, state_dicts, provenance, overwrite=True)
        minutes, seconds = divmod(round(time.perf_counter() - session_started), 60)
        rows = [("Teacher folder", run.teacher), ("Stage", f"{config.stage}, step {step} of {config.max_steps}")]
        rows += [(label, output / name) for label, name in _RUN_FOLDERS if (output / name).exists()]
        rows += [
            ("Time", f"{minutes} min {seconds} s this session"),
            ("Distil with it", f"ns-train sparsefusion --pipeline.model.teacher {run.teacher} ..."),
        ]
        print_summary("Teacher Training Finished", rows)
    accelerator.wait_for_everyone()
    return run


_RUN_FOLDERS = (("Checkpoints", "checkpoints"), ("Samples", "samples"), ("Tensorboard", "tensorboard"))
"""(label, folder) of what a training run writes beside the teacher folder (shown when present)."""


def _json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))
