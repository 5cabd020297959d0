"""The ``sparsefusion``, ``sparsefusion-mini`` and ``sparsefusion-tiny`` nerfstudio methods.

``sparsefusion`` carries the paper's settings (docs/method.md#schedules): 3000 iterations, the
[-4, 4]^3 Instant-NGP field, 64 + 64 samples per ray, Adam with lr 5e-3 on the hash grid and 5e-4
on the MLP, input views rendered at half resolution (256² CO3D crops → 128²), 128² = 16384 rays a
step. With ``--pipeline.model.teacher FOLDER`` every iteration also runs the distillation step (B):
a 128² render of a novel camera, upsampled to 256², supervised by the EFT for the first 1000
iterations and by the diffusion model after, through the ``cached`` distillation schedule by
default (a target per pool camera, refreshed in batches: docs/schedules.md);
``--pipeline.model.distillation.schedule authors`` asks for a fresh PLMS target every iteration, as
the paper does. ``sparsefusion-tiny`` is the same method at sizes that
train in seconds on a CPU (with a tiny teacher: 64² teacher images, 32² renders).
``sparsefusion-mini`` is the paper's method sized for the ``mini`` teacher (64² images, 16² latents)
on a CPU: the paper's structure and ratios at a quarter of the image side, a shortened schedule
(:func:`sparsefusion_mini_config` says what differs and why).

All train with :class:`~sparsefusion_ns.engine.trainer.SparseFusionTrainer`: nerfstudio's trainer with
atomic checkpoints, a ``--max-num-iterations`` that counts the whole run (a resumed run trains the
steps left), and a stop on non-finite losses.
"""

from __future__ import annotations

import torch

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from sparsefusion_ns.data.co3d_dataparser import Co3dDataParserConfig
from sparsefusion_ns.data.masked_dataset import MaskedImageDataset
from sparsefusion_ns.data.sparse_view_dataparser import SparseViewsDataParserConfig
from sparsefusion_ns.distillation.config import DistillationConfig
from sparsefusion_ns.distillation.novel_cameras import NovelCameraPoolConfig
from sparsefusion_ns.engine.trainer import SparseFusionTrainerConfig
from sparsefusion_ns.field.hash_grid import HashGridLayout
from sparsefusion_ns.field.sparsefusion_field import SparseFusionFieldConfig
from sparsefusion_ns.model.sparsefusion_model import SparseFusionModelConfig


def _optimizers(grid_lr: float, mlp_lr: float) -> dict:
    # No LR scheduler: the authors' StepLR(3000, 0.2) never fires within 3000 iterations, and
    # nerfstudio's schedulers store numpy scalars that torch>=2.6 refuses to load (weights_only).
    return {
        "hash_grid": {"optimizer": AdamOptimizerConfig(lr=grid_lr, eps=1e-8), "scheduler": None},
        "mlp": {"optimizer": AdamOptimizerConfig(lr=mlp_lr, eps=1e-8), "scheduler": None},
    }


def sparsefusion_config() -> SparseFusionTrainerConfig:
    """The paper's configuration."""
    return SparseFusionTrainerConfig(
        method_name="sparsefusion",
        steps_per_eval_batch=500,
        steps_per_eval_image=500,
        steps_per_save=1000,
        max_num_iterations=3000,
        mixed_precision=False,
        # nerfstudio defaults to CUDA; pick the CPU automatically on machines without a GPU.
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                _target=VanillaDataManager[MaskedImageDataset],
                dataparser=SparseViewsDataParserConfig(),
                train_num_rays_per_batch=128 * 128,
                eval_num_rays_per_batch=4096,
                camera_res_scale_factor=0.5,
            ),
            model=SparseFusionModelConfig(eval_num_rays_per_chunk=4096),
        ),
        optimizers=_optimizers(grid_lr=5e-3, mlp_lr=5e-4),
        viewer=ViewerConfig(num_rays_per_chunk=4096),
        vis="viewer",
    )


def sparsefusion_tiny_config() -> SparseFusionTrainerConfig:
    """Same method, small enough that an iteration takes a fraction of a second on 2 CPU cores."""
    config = sparsefusion_config()
    config.method_name = "sparsefusion-tiny"
    config.max_num_iterations = 300
    config.steps_per_eval_batch = 100
    config.steps_per_eval_image = 100
    config.steps_per_save = 100
    datamanager = config.pipeline.datamanager
    datamanager.train_num_rays_per_batch = 512
    datamanager.eval_num_rays_per_batch = 512
    config.pipeline.model = SparseFusionModelConfig(
        field=SparseFusionFieldConfig(
            grid=HashGridLayout(num_levels=8, log2_hashmap_size=14, max_resolution=512), hidden_dim=32
        ),
        num_uniform_samples=32,
        num_importance_samples=32,
        occupancy_grid_resolution=64,
        eval_num_rays_per_chunk=2048,
        distillation=DistillationConfig(
            pool=NovelCameraPoolConfig(num_circle_cameras=12, num_random_cameras=6),
            render_resolution=32,
            bootstrap_iterations=100,
            log_images_every=25,
        ),
    )
    config.viewer = ViewerConfig(num_rays_per_chunk=2048)
    return config


MINI_IMAGE_SIZE = 64
"""Side of the ``mini`` teacher's images (``EFTConfig.mini``), hence of the mini method's co3d crops."""


def sparsefusion_mini_config() -> SparseFusionTrainerConfig:
    """The paper's method sized for the ``mini`` teacher (64² images, 16² latents) on 2 CPU cores.

    Same as ``sparsefusion`` (field structure, losses, both distillation phases, PLMS targets, the
    honest input-camera pool) except, and why:

    - **Images**: ``co3d`` crops of 64² (``co3d --image-size 64``, the default here), the mini
      teacher's image size, so the EFT sees the dataparser's crops without resampling. Input views
      are supervised at full resolution (``camera_res_scale_factor=1.0``): the paper halves its
      256² crops to 128² to render them at the size of its novel-view renders; a 64² crop halved
      would leave 32² views with too little detail to supervise the field.
    - **Rays**: 1024 input-view rays a step, as many as step B renders (32²): the paper balances the
      two steps the same way (16384 rays of input views, a 128² render of a novel view). Measured
      on the shared 2-core machine with one torch thread (another job using both cores), an
      iteration of step A alone took 0.56 s at 1024 rays, 1.36 s at 2048 and 3.2 s at 4096 (the
      pure-torch hash grid's cost grows faster than the ray count).
    - **Novel views**: rendered at 32² and upsampled to the teacher's 64² (the paper's 1:2 ratio,
      128² → 256²).
    - **Field**: ``sparsefusion-tiny``'s CPU-sized Instant-NGP (8 levels, 2^14 entries, 32-wide MLP,
      32 + 32 samples per ray) instead of the paper's 16 levels, 2^16 entries, 64 + 64 samples: the
      paper's field costs ≈ 7× more per ray on a CPU.
    - **Schedule**: 600 iterations of which the first 200 bootstrap from the EFT (steps 0–200), then
      the diffusion phase (the paper: 3000 with 1000 bootstrap, the same one-third split), with the
      ``cached`` targets by default (304 UNet evaluations a scene). With ``schedule authors``, PLMS
      denoises in at most 10 steps (``plms_max_steps``; the paper 50): its step count follows t as
      the paper's, min(⌊2 · 10 · t⌋, 10), so a target costs ≈ 8.6 UNet evaluations on average
      instead of ≈ 38. Measured as above over a whole 600-iteration run with the random-weight mini
      teacher: 0.64 s per iteration without a teacher, 1.16 s per bootstrap and 1.47 s per diffusion
      iteration (8.3 UNet evaluations per diffusion iteration, ≈ 0.02 s each: the paper's 50 steps
      would add ≈ 0.6 s per iteration). The same machine ran the README's ``sparsefusion-tiny``
      speed benchmark ≈ 3× slower than its idle 2-core figures.
    - **Pool**: 24 circle and 12 random orbit cameras (the paper: 50 circle cameras plus the
      evaluation poses; the honest default pool uses the input cameras instead of the latter).
    - **Perceptual loss**: on, as the paper's, when LPIPS-VGG's local weights are found
      (``--pipeline.model.lpips-vgg-weights``, or torchvision's cache); without them the run trains
      without the term and says so at start-up (``perceptual_loss_if_weights_missing="skip"``;
      ``sparsefusion`` stops instead), because those weights are not part of the package.
      ``--pipeline.model.distillation.use-perceptual-loss False`` turns it off either way.
    """
    config = sparsefusion_tiny_config()
    config.method_name = "sparsefusion-mini"
    config.max_num_iterations = 600
    config.steps_per_eval_batch = 200
    config.steps_per_eval_image = 200
    config.steps_per_save = 200
    datamanager = config.pipeline.datamanager
    datamanager.dataparser = Co3dDataParserConfig(image_size=MINI_IMAGE_SIZE)
    datamanager.camera_res_scale_factor = 1.0
    datamanager.train_num_rays_per_batch = (MINI_IMAGE_SIZE // 2) ** 2
    datamanager.eval_num_rays_per_batch = 2048
    distillation = config.pipeline.model.distillation
    distillation.pool = NovelCameraPoolConfig(num_circle_cameras=24, num_random_cameras=12)
    distillation.render_resolution = MINI_IMAGE_SIZE // 2
    distillation.bootstrap_iterations = 200
    distillation.plms_max_steps = 10
    distillation.perceptual_loss_if_weights_missing = "skip"
    distillation.log_images_every = 50
    return config


sparsefusion_method = MethodSpecification(
    config=sparsefusion_config(),
    description="SparseFusion (Zhou & Tulsiani, CVPR 2023): sparse-view reconstruction distilling a "
    "view-conditioned diffusion teacher into an Instant-NGP field.",
)

sparsefusion_mini_method = MethodSpecification(
    config=sparsefusion_mini_config(),
    description="SparseFusion sized for the mini teacher (64² co3d crops, 16² latents) on a CPU: 600 iterations, "
    "bootstrap 200.",
)

sparsefusion_tiny_method = MethodSpecification(
    config=sparsefusion_tiny_config(),
    description="SparseFusion at tiny sizes for CPU tests and demos (seconds per hundred iterations).",
)
