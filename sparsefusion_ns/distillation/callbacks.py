"""Step (B) as a nerfstudio training callback, and the start-up that prepares it.

Every training iteration nerfstudio runs step (A), the input-view losses of
``SparseFusionModel.get_loss_dict``, with its own optimiser step. Right after it (at
``AFTER_TRAIN_ITERATION``, inside the trainer's lock, so the web viewer never renders mid-step),
:class:`NovelViewStep` runs step (B) as a second optimiser step on the same optimisers:

1. draw a pool camera (from the checkpointed stream of :class:`DistillationState`);
2. render it at ``render_resolution``² with gradients and upsample it bilinearly to the teacher's S²;
3. bootstrap (step ≤ ``bootstrap_iterations``) or diffusion losses (``objective.py``); the diffusion
   target is a fresh PLMS sample (``schedule="authors"``) or the camera's cached target, regenerated
   for the whole pool every ``cached.refresh_every`` iterations (``schedule="cached"``,
   ``target_cache.py``);
4. backward (through the render only) and step every optimiser, honouring the grad scaler.

Start-up (:func:`start_distillation`, called from ``SparseFusionModel.get_training_callbacks``)
loads the teacher, checks the LPIPS weights if the diffusion phase needs them, builds the camera
pool and warms the EFT cache. The distillation never reaches into the model: it receives a
:class:`Student` (a render function, the device, the Huber scale and its own checkpointed state),
the optimisers through nerfstudio's callback attributes, and the run's last step; it hands the
teacher and LPIPS it loaded back to the model (:class:`Distillation`), which keeps them outside its
module tree, so neither is ever checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from rich.markup import escape
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.utils import writer
from nerfstudio.utils.misc import step_check
from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.cameras.conventions import ndc_to_nerfstudio
from sparsefusion_ns.distillation.config import DistillationConfig
from sparsefusion_ns.distillation.counters import TeacherCounters
from sparsefusion_ns.distillation.novel_cameras import NovelCameraPool, build_novel_camera_pool
from sparsefusion_ns.distillation.objective import (
    bootstrap_losses,
    denoised_target,
    diffusion_losses,
    sample_start_time,
    upsample,
)
from sparsefusion_ns.distillation.progress import DistillationObserver, Phase, StepReport
from sparsefusion_ns.distillation.state import DistillationState
from sparsefusion_ns.distillation.target_cache import TargetCache
from sparsefusion_ns.distillation.teacher_cache import TeacherCache
from sparsefusion_ns.distillation.teacher_inputs import inputs_for_teacher, scene_frame_cameras
from sparsefusion_ns.engine.trainer import check_finite_losses
from sparsefusion_ns.metrics import LPIPSVGG, LPIPSConfig, LPIPSWeightsNotFoundError, load_lpips_vgg
from sparsefusion_ns.teacher.bundle import Teacher
from sparsefusion_ns.teacher.samplers import PLMSSampler, PLMSSamplerConfig
from sparsefusion_ns.teacher_training.config import DataConfig


class TeacherLoadError(RuntimeError):
    """The teacher folder given to the distillation cannot be used (the message says why and how to fix it)."""


def load_teacher(folder: Path, device: torch.device) -> Teacher:
    """``Teacher.from_pretrained`` with an error that names the option and the folder."""
    try:
        return Teacher.from_pretrained(folder, device=device)
    except (OSError, ValueError, RuntimeError) as error:
        raise TeacherLoadError(
            f"--pipeline.model.teacher {folder}: cannot load the SparseFusion teacher: {error}. Point it at a "
            "folder written by sf-convert-teacher (or Teacher.save_pretrained), or leave it unset to train "
            "on the input views alone."
        ) from error


def phase_at(step: int, config: DistillationConfig) -> Phase:
    """The authors' rule: bootstrap while step ≤ bootstrap_iterations (0-based), diffusion after."""
    return "bootstrap" if step <= config.bootstrap_iterations else "diffusion"


def perceptual_loss_needed(config: DistillationConfig, last_step: int) -> bool:
    """Whether a run ending at ``last_step`` reaches a diffusion step with a perceptual term."""
    return config.use_perceptual_loss and config.perceptual_weight > 0 and phase_at(last_step, config) == "diffusion"


def load_perceptual_loss(lpips_config: LPIPSConfig, device: torch.device) -> LPIPSVGG:
    """LPIPS-VGG for the diffusion phase; a missing weight file stops the start-up with the fix."""
    try:
        return load_lpips_vgg(lpips_config, device)
    except LPIPSWeightsNotFoundError as error:
        raise LPIPSWeightsNotFoundError(
            f"The distillation's diffusion phase uses LPIPS-VGG as a loss (weight "
            f"--pipeline.model.distillation.perceptual-weight). {error} Pass the file with "
            f"--pipeline.model.lpips-vgg-weights PATH, or run without the perceptual term: "
            f"--pipeline.model.distillation.use-perceptual-loss False."
        ) from error


@dataclass(frozen=True)
class Student:
    """The field being distilled, as step (B) sees it."""

    render: Callable[[RayBundle], Dict[str, Tensor]]
    """Renders rays with gradients; the outputs hold "rgb" and "accumulation" (the model's forward)."""
    device: torch.device
    """Where the field lives (and the rays it renders are made)."""
    huber_scale: float
    """δ of the pseudo-Huber penalty of the field's own losses; the bootstrap terms use the same."""
    state: DistillationState
    """Step (B)'s checkpointed random stream and cost totals (buffers of a module of the model)."""


class NovelViewStep:
    """Step (B) of one iteration (module docstring); call it with the step number."""

    def __init__(
        self,
        student: Student,
        config: DistillationConfig,
        teacher: Teacher,
        pool: NovelCameraPool,
        cache: TeacherCache,
        counters: TeacherCounters,
        lpips: Optional[LPIPSVGG],
        attributes: TrainingCallbackAttributes,
        observer: Optional[DistillationObserver] = None,
        last_step: Optional[int] = None,
    ) -> None:
        self.student = student
        self.config = config
        self.teacher = teacher
        self.pool = pool
        self.cache = cache
        self.counters = counters
        self.lpips = lpips
        self.optimizers = attributes.optimizers
        self.grad_scaler = attributes.grad_scaler
        self.mixed_precision = bool(attributes.trainer.mixed_precision)
        self.steps_per_log = attributes.trainer.config.logging.steps_per_log
        self.image_size = teacher.config.eft.image_size
        self.render_cameras: Cameras = ndc_to_nerfstudio(
            pool.cameras, (config.render_resolution, config.render_resolution)
        ).to(student.device)
        self.sampler = PLMSSampler(
            PLMSSamplerConfig(max_steps=config.plms_max_steps, authors_quirks=config.plms_authors_quirks),
            teacher.schedule,
        )
        self.targets: Optional[TargetCache] = None
        """The ``cached`` schedule's per-camera targets; None with ``authors``."""
        if config.schedule == "cached":
            if last_step is None:
                raise ValueError("the cached distillation schedule needs the run's last step (last_step)")
            self.targets = TargetCache(config, teacher, len(pool), last_step, counters)
        self.last_losses: Dict[str, Tensor] = {}
        """Step (B)'s weighted loss terms of the latest iteration (detached)."""
        self.observer = observer
        """Told about the pool and, when it asks, about iterations (the viewer's panel); None: nobody."""
        if observer is not None:
            observer.pool_ready(pool, self.render_cameras)

    def render(self, index: int) -> tuple[Tensor, Tensor]:
        """Pool camera ``index`` rendered with gradients, upsampled to S²: (rgb (1,3,S,S), opacity (1,1,S,S))."""
        resolution = self.config.render_resolution
        rays = self.render_cameras.generate_rays(camera_indices=index).flatten()
        with torch.autocast(device_type=self.student.device.type, enabled=self.mixed_precision):
            outputs = self.student.render(rays)

        def image(values: Tensor) -> Tensor:
            return values.float().reshape(resolution, resolution, -1).permute(2, 0, 1)[None]

        return (
            upsample(image(outputs["rgb"]), self.image_size),
            upsample(image(outputs["accumulation"]), self.image_size),
        )

    def __call__(self, step: int) -> None:
        state = self.student.state
        generator = state.generator()
        index = int(torch.randint(len(self.pool), (), generator=generator))
        view = self.cache[index]
        eft_rgb = upsample(view.rgb[None], self.image_size)
        rgb, opacity = self.render(index)

        target_time = None
        if phase_at(step, self.config) == "bootstrap":
            target_image = eft_rgb
            losses = bootstrap_losses(rgb, opacity, eft_rgb, self.config, self.student.huber_scale)
        else:
            if self.targets is None:
                t = sample_start_time(generator, self.config.max_start_time)
                with self.counters.timed() as cost:
                    target = denoised_target(self.teacher, self.sampler, rgb, view.features[None], t, generator)
                    cost.vae_encodes += 1
                    cost.unet_evals += target.num_unet_evals
                    cost.vae_decodes += 1
            else:
                if self.targets.due(step):
                    self.targets.refresh(step, lambda i: self.render(i)[0], lambda i: self.cache[i].features, generator)
                target = self.targets[index]
            target_image, target_time = target.image, target.t
            losses = diffusion_losses(rgb, opacity, target, self.config, self.lpips)

        check_finite_losses(losses, step, what="distillation (novel-view)")
        loss = sum(losses.values())
        self.optimizers.zero_grad_all()
        self.grad_scaler.scale(loss).backward()
        self.optimizers.optimizer_scaler_step_all(self.grad_scaler)
        self.grad_scaler.update()
        state.store(generator)
        self.last_losses = {name: value.detach() for name, value in losses.items()}

        self.counters.finish_iteration(step)  # every iteration: the cost record is complete
        if step_check(step, self.steps_per_log, run_at_zero=True):
            writer.put_dict(name="Distillation Loss Dict", scalar_dict=self.last_losses, step=step)
            if target_time is not None:
                writer.put_scalar(name="Distillation/start_time", scalar=target_time, step=step)
        if step_check(step, self.config.log_images_every, run_at_zero=True):
            panels = [rgb[0].detach(), target_image[0], eft_rgb[0]]
            writer.put_image(
                name="Distillation/render_target_eft", image=torch.cat(panels, dim=-1).permute(1, 2, 0), step=step
            )
        if self.observer is not None and self.observer.wants_report(step):
            self.observer.step_done(
                StepReport(
                    step=step,
                    phase=phase_at(step, self.config),
                    camera_index=index,
                    camera_kind=self.pool.kinds[index],
                    start_time=target_time,
                    totals=self.counters.totals(),
                    render=rgb[0].detach(),
                    target=target_image[0].detach(),
                    eft=eft_rgb[0],
                )
            )


@dataclass(frozen=True)
class Distillation:
    """What the start-up gives the model: the callback to register and what it loaded for it."""

    callbacks: List[TrainingCallback]
    """Step (B), to run after every training iteration."""
    teacher: Teacher
    """The frozen teacher (the model keeps it outside its module tree: never checkpointed)."""
    lpips: Optional[LPIPSVGG]
    """LPIPS-VGG when the diffusion phase's perceptual term uses it, else None."""


def start_distillation(
    config: DistillationConfig,
    teacher_folder: Path,
    student: Student,
    lpips_config: LPIPSConfig,
    last_step: int,
    attributes: TrainingCallbackAttributes,
    observer: Optional[DistillationObserver] = None,
) -> Distillation:
    """Load the teacher (and LPIPS if a step up to ``last_step`` needs it), build the pool and the EFT
    cache; return the step (B) callback with what was loaded. ``observer`` (the viewer's panel) is
    told about the pool and, when it asks, about iterations (``progress.py``)."""
    device = student.device
    teacher = load_teacher(teacher_folder, device)

    lpips = None
    if perceptual_loss_needed(config, last_step):
        try:
            lpips = load_perceptual_loss(lpips_config, device)
        except LPIPSWeightsNotFoundError as error:
            if config.perceptual_loss_if_weights_missing != "skip":
                raise
            CONSOLE.print(
                "[bold yellow]Distillation:[/bold yellow] training without the perceptual (LPIPS-VGG) loss "
                f"(perceptual-loss-if-weights-missing skip): {escape(str(error))}",
                soft_wrap=True,
                highlight=False,
            )

    datamanager = attributes.pipeline.datamanager
    inputs = inputs_for_teacher(datamanager, teacher)  # crops and world scale the teacher was trained with
    scene_frames = None
    if config.pool.source == "authors":
        training_data = DataConfig.of_teacher(teacher.provenance)
        scene_frames = scene_frame_cameras(datamanager, teacher.config.eft.image_size, training_data)
    pool = build_novel_camera_pool(
        config.pool, inputs.cameras, torch.Generator().manual_seed(config.seed), scene_frames
    )
    # d̄, the centre of the EFT's depth samples: mean distance of the known cameras from the origin
    # (the authors average over the scene's frames; the honest pool only knows the inputs)
    depth_center = inputs.depth_center
    if scene_frames is not None:
        depth_center = float(scene_frames.camera_centers().norm(dim=-1).mean())

    counters = TeacherCounters(student.state, device)
    cache = TeacherCache(
        teacher.eft,
        inputs.images,
        inputs.cameras,
        pool.cameras,
        depth_center,
        max_bytes=int(config.cache_max_megabytes * 2**20),
        counters=counters,
    )
    cached = cache.warm_up()
    CONSOLE.print(
        f"Distillation: {len(pool)} pool cameras ({config.pool.source} pool), {cached} EFT views cached "
        f"({cache.cached_bytes / 2**20:.1f} MiB) in {counters.current.teacher_seconds:.1f} s; bootstrap until "
        f"step {config.bootstrap_iterations}, {config.schedule} schedule, perceptual loss {'on' if lpips is not None else 'off'}."
    )
    step_b = NovelViewStep(student, config, teacher, pool, cache, counters, lpips, attributes, observer, last_step)
    callback = TrainingCallback(
        where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION], update_every_num_iters=1, func=step_b
    )
    return Distillation(callbacks=[callback], teacher=teacher, lpips=lpips)
