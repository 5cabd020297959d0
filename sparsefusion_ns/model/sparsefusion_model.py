"""The ``sparsefusion`` nerfstudio model: the Instant-NGP field, its renderer and the input-view losses.

Training a field on 2–6 masked input views (docs/method.md#input-view-step):
  L_A = λ_rgb · Huber(Ĉ, C) + λ_mask · Huber(Ô, M) + λ_opacity · mean(sqrt(Ô² + 0.01))
with Ĉ the rendered colour, C the masked image, Ô the rendered opacity (accumulation), M the
foreground mask and Huber the authors' pseudo-Huber with δ = 0.1. Without a teacher this is our
plain sparse-view NeRF baseline. With ``teacher`` set, every iteration also runs the distillation
step (B), a training callback (``sparsefusion_ns/distillation/callbacks.py``) that supervises renders
of novel cameras with the frozen teacher. Dependencies run one way: the model hands the
distillation what it needs (its render function, its distillation state, the run's last step) and
keeps what the distillation loaded; the distillation never imports the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Literal, Optional, Tuple, Type

import torch
from torch.nn import Parameter

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.renderers import (
    AccumulationRenderer,
    DepthRenderer,
    NormalsRenderer,
    RGBRenderer,
)
from nerfstudio.model_components.scene_colliders import AABBBoxCollider
from nerfstudio.model_components.shaders import NormalsShader
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps

from sparsefusion_ns.distillation.config import DistillationConfig
from sparsefusion_ns.distillation.state import DistillationState
from sparsefusion_ns.engine import nerfstudio_loading
from sparsefusion_ns.engine.trainer import last_training_step
from sparsefusion_ns.field.sparsefusion_field import SparseFusionField, SparseFusionFieldConfig
from sparsefusion_ns.losses import opacity_regulariser, pseudo_huber
from sparsefusion_ns.model.volume_sampling import (
    NERFACC,
    ImportanceSampling,
    OccupancyGridSampling,
    SampledRays,
)
from sparsefusion_ns.viewer.panel import SparseFusionViewerControl, ViewerPanelConfig

if TYPE_CHECKING:
    from sparsefusion_ns.metrics import LPIPSConfig
    from sparsefusion_ns.teacher.bundle import Teacher


@dataclass
class SparseFusionModelConfig(ModelConfig):
    """SparseFusion's field, sampler and losses. Defaults are the paper's (docs/method.md#distillation)."""

    _target: Type = dataclasses.field(default_factory=lambda: SparseFusionModel)
    enable_collider: bool = False
    """Rays are clipped to the scene box by the model itself (AABB collider)."""

    field: SparseFusionFieldConfig = dataclasses.field(default_factory=SparseFusionFieldConfig)
    """The Instant-NGP field's sizes (hash grid, MLP, initial density blob); it covers the scene box."""

    # Sampling
    num_uniform_samples: int = 64
    """Stratified samples per ray of the pure-torch sampler."""
    num_importance_samples: int = 64
    """Importance samples per ray of the pure-torch sampler, drawn from the coarse weights."""
    sampler: Literal["auto", "torch", "nerfacc"] = "auto"
    """Ray sampler: 'auto' uses nerfacc occupancy-grid marching when the model is on CUDA and nerfacc's
    CUDA extension loads, otherwise the pure-torch importance sampler; 'nerfacc' insists on the former
    (an error where it cannot run), 'torch' on the latter (the rule of utils/cuda_kernels.py)."""
    occupancy_grid_resolution: int = 128
    """Resolution of nerfacc's occupancy grid (CUDA path)."""
    render_step_size: Optional[float] = None
    """Marching step of the nerfacc path; None: box diagonal / 1000."""

    # Losses of the input-view step (A)
    rgb_loss_weight: float = 1.0
    """λ_rgb: weight of the pseudo-Huber colour loss on input views."""
    mask_loss_weight: float = 1.0
    """λ_mask: weight of the pseudo-Huber loss between rendered opacity and foreground mask."""
    opacity_loss_weight: float = 1e-3
    """λ_opacity: weight of the opacity regulariser mean(sqrt(O² + 0.01))."""
    huber_scale: float = 0.1
    """δ of the pseudo-Huber loss (authors: 0.1)."""

    # Outputs and metrics
    predict_normals: bool = True
    """Render normals (−∇σ) when not training, for ns-export's point cloud and Poisson mesh."""
    lpips_vgg_weights: Optional[Path] = None
    """Local VGG-16 backbone weights for LPIPS-VGG (torchvision's vgg16-397923af.pth layout), used by
    the distillation's perceptual loss (start-up fails without it, unless
    distillation.use-perceptual-loss is False) and the eval metric (skipped with one warning without
    it). Nothing is ever downloaded."""
    lpips_lin_weights: Optional[Path] = None
    """Local LPIPS linear-head weights (the lpips package's weights/v0.1/vgg.pth); found
    automatically when the `lpips` package is installed."""
    masked_eval_metrics: bool = True
    """Evaluate held-out views with both images multiplied by the foreground mask and valid region
    (the paper's protocol); False compares the images as they are."""

    # Distillation (step B)
    teacher: Optional[Path] = None
    """Teacher folder (EFT + VLDM + VAE, written by sf-convert-teacher). Set: every iteration also
    distils the frozen teacher into the field from novel cameras (SparseFusion). None: input views only."""
    distillation: DistillationConfig = dataclasses.field(default_factory=DistillationConfig)
    """Settings of the distillation step; used only with a teacher."""

    # Web viewer
    viewer_panel: ViewerPanelConfig = dataclasses.field(default_factory=ViewerPanelConfig)
    """What nerfstudio's web viewer shows: it opens framed on the object, and during distillation a
    SparseFusion panel (phase, iteration, UNet evaluations, t, render | target | EFT) and the pool
    cameras (sparsefusion_ns/viewer/)."""

    def __setstate__(self, state: Dict[str, Any]) -> None:
        """Config files of runs trained before the field's sizes were nested (``num_levels: 16`` … beside
        the other model options) load with those sizes in ``field``; options added since (missing from
        the file) take their defaults; other states load as they are."""
        state = dict(state)
        flat = {name: state.pop(name) for name in _FLAT_GRID_OPTIONS + _FLAT_FIELD_OPTIONS if name in state}
        if flat:
            nested = state.get("field") or SparseFusionFieldConfig()
            grid = dataclasses.replace(nested.grid, **{k: v for k, v in flat.items() if k in _FLAT_GRID_OPTIONS})
            state["field"] = dataclasses.replace(
                nested, grid=grid, **{k: v for k, v in flat.items() if k in _FLAT_FIELD_OPTIONS}
            )
        for option in dataclasses.fields(self):
            if option.init and option.name not in state:
                if option.default_factory is not dataclasses.MISSING:
                    state[option.name] = option.default_factory()
                elif option.default is not dataclasses.MISSING:
                    state[option.name] = option.default
        self.__dict__.update(state)


_FLAT_GRID_OPTIONS = ("num_levels", "features_per_level", "log2_hashmap_size", "base_resolution", "max_resolution")
"""Model options of config files written before ``field``: now ``field.grid.*``."""
_FLAT_FIELD_OPTIONS = ("hidden_dim", "num_layers", "blob_amplitude", "blob_std")
"""Model options of config files written before ``field``: now ``field.*``."""


class SparseFusionModel(Model):
    """SparseFusion's Instant-NGP field trained on sparse masked input views."""

    config: SparseFusionModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        nerfstudio_loading.install()  # ns-export/ns-viewer/ns-eval then load our newest complete checkpoint
        config = self.config
        self.field = SparseFusionField(config.field, half_extent=float(self.scene_box.aabb.abs().max()))
        self.collider = AABBBoxCollider(self.scene_box, near_plane=0.0)
        self.importance_sampling = ImportanceSampling(config.num_uniform_samples, config.num_importance_samples)
        self._occupancy_sampling: Optional[OccupancyGridSampling] = None  # built on first CUDA use
        self.renderer_rgb = RGBRenderer(background_color="black")
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer(method="expected")
        self.renderer_normals = NormalsRenderer()
        self.normals_shader = NormalsShader()
        self._lpips = None
        self._lpips_checked = False
        # Loaded when training starts (start_distillation) and kept outside the module tree, like
        # the LPIPS weights: neither ever enters a checkpoint, and exporting needs no teacher.
        self._teacher: Optional[Teacher] = None
        self._first_training_step = 0  # the step after a loaded checkpoint's (update_to_step)
        if config.teacher is not None:
            self.distillation_state = DistillationState(config.distillation.seed + 1)
        # Found by nerfstudio's viewer (a public ViewerControl attribute): the opening camera and the panel.
        self.viewer_control = SparseFusionViewerControl(config.viewer_panel)

    # ------------------------------------------------------------------ teacher
    @property
    def teacher(self) -> Optional[Teacher]:
        """The frozen teacher once training has started with one, else None."""
        return self._teacher

    def _keep_outside_checkpoints(self, name: str, module: Optional[torch.nn.Module]) -> None:
        """Hold ``module`` as attribute ``name`` without registering it as a submodule (never checkpointed)."""
        object.__setattr__(self, name, module)

    def lpips_config(self) -> LPIPSConfig:
        """Where this model's LPIPS-VGG weights are (`--pipeline.model.lpips-*-weights`)."""
        from sparsefusion_ns.metrics import LPIPSConfig

        return LPIPSConfig(vgg_weights=self.config.lpips_vgg_weights, lin_weights=self.config.lpips_lin_weights)

    # ------------------------------------------------------------------ sampling
    def uses_nerfacc(self) -> bool:
        """Whether this forward pass marches rays with nerfacc (CUDA) rather than pure torch."""
        return NERFACC.use(self.config.sampler, on_cuda=self.device.type == "cuda")

    def occupancy_sampling(self) -> OccupancyGridSampling:
        if self._occupancy_sampling is None:
            aabb = self.scene_box.aabb.to(self.device)
            step = self.config.render_step_size or float((aabb[1] - aabb[0]).norm()) / 1000
            self._occupancy_sampling = OccupancyGridSampling(
                aabb, self.config.occupancy_grid_resolution, step, self.device
            )
        return self._occupancy_sampling

    def sample(self, ray_bundle: RayBundle) -> SampledRays:
        if self.uses_nerfacc():
            return self.occupancy_sampling()(ray_bundle, self.field.density_at, self.training)
        return self.importance_sampling(ray_bundle, self.field.density_at)

    # ------------------------------------------------------------------ nerfstudio API
    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        def update_occupancy_grid(step: int) -> None:
            if self.uses_nerfacc():
                self.occupancy_sampling().update(step, self.field.density_at)

        callbacks = [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=update_occupancy_grid,
            )
        ]
        if self.config.teacher is not None:
            callbacks += self._start_distillation(training_callback_attributes)
        return callbacks

    def update_to_step(self, step: int) -> None:
        """nerfstudio calls this when it loads a checkpoint of ``step``: training resumes after it."""
        super().update_to_step(step)
        self._first_training_step = step + 1

    def _start_distillation(self, attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        """Step (B)'s callback; the teacher and LPIPS-VGG it loads are kept here, outside checkpoints."""
        from sparsefusion_ns.distillation.callbacks import Student, start_distillation

        assert self.config.teacher is not None
        distillation = start_distillation(
            self.config.distillation,
            self.config.teacher,
            Student(
                render=self, device=self.device, huber_scale=self.config.huber_scale, state=self.distillation_state
            ),
            self.lpips_config(),
            last_training_step(attributes.trainer, self._first_training_step),
            attributes,
            observer=self.viewer_control,
        )
        self._keep_outside_checkpoints("_teacher", distillation.teacher)
        if distillation.lpips is not None:  # the eval metric uses the same weights
            self._keep_outside_checkpoints("_lpips", distillation.lpips)
            self._lpips_checked = True
        return distillation.callbacks

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {
            "hash_grid": list(self.field.encoding.parameters()),
            "mlp": list(self.field.mlp.parameters()),
        }

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, torch.Tensor]:
        num_rays = len(ray_bundle)
        sampled = self.sample(ray_bundle)
        samples, ray_indices = sampled.ray_samples, sampled.ray_indices
        want_normals = self.config.predict_normals and not self.training
        field_outputs = self.field(samples, compute_normals=want_normals)
        density = field_outputs[FieldHeadNames.DENSITY]
        if ray_indices is None:
            weights = samples.get_weights(density)
        else:
            import nerfacc

            weights = nerfacc.render_weight_from_density(
                t_starts=samples.frustums.starts[..., 0],
                t_ends=samples.frustums.ends[..., 0],
                sigmas=density[..., 0],
                packed_info=nerfacc.pack_info(ray_indices, num_rays),
            )[0][..., None]
        packed = {"ray_indices": ray_indices, "num_rays": num_rays} if ray_indices is not None else {}
        outputs = {
            "rgb": self.renderer_rgb(rgb=field_outputs[FieldHeadNames.RGB], weights=weights, **packed),
            "accumulation": self.renderer_accumulation(weights=weights, **packed),
            "depth": self.renderer_depth(weights=weights, ray_samples=samples, **packed),
        }
        if want_normals:
            normals = field_outputs[FieldHeadNames.NORMALS].detach()
            if ray_indices is None:
                rendered_normals = self.renderer_normals(normals=normals, weights=weights.detach())
            else:
                import nerfacc

                summed = nerfacc.accumulate_along_rays(weights.detach()[..., 0], normals, ray_indices, num_rays)
                rendered_normals = torch.nn.functional.normalize(summed, dim=-1)
            # (n + 1) / 2 in [0, 1]: the convention of nerfacto and of ns-export's normal handling.
            outputs["normals"] = self.normals_shader(rendered_normals)
        return outputs

    def get_rgba_image(self, outputs: Dict[str, torch.Tensor], output_name: str = "rgb") -> torch.Tensor:
        """Straight-alpha RGBA: colour un-premultiplied from the black background, alpha = opacity.

        ns-export keeps points whose alpha exceeds 0.5 and textures meshes from this colour; the
        base class would report alpha = 1 everywhere for a black background.
        """
        accumulation = outputs[output_name.replace("rgb", "accumulation")]
        rgb = outputs[output_name] / accumulation.clamp_min(1e-10)
        return torch.cat([rgb.clamp(0.0, 1.0), accumulation], dim=-1)

    def get_metrics_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:
        from sparsefusion_ns.metrics import psnr_from_mse  # metrics load scikit-image: not at import

        image = batch["image"].to(self.device)
        return {"psnr": psnr_from_mse(torch.mean((outputs["rgb"] - image) ** 2))}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        config = self.config
        image = batch["image"].to(self.device)
        fg_mask = batch["fg_mask"].to(self.device)
        accumulation = outputs["accumulation"]
        return {
            "rgb_loss": config.rgb_loss_weight * pseudo_huber(outputs["rgb"], image, config.huber_scale).mean(),
            "mask_loss": config.mask_loss_weight * pseudo_huber(accumulation, fg_mask, config.huber_scale).mean(),
            "opacity_loss": config.opacity_loss_weight * opacity_regulariser(accumulation),
        }

    def get_image_metrics_and_images(
        self, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        """PSNR, SSIM (scikit-image definitions) and LPIPS-VGG (when its local weights exist) of a
        held-out view; by default both images are multiplied by the foreground mask and the valid
        region, the paper's protocol."""
        from sparsefusion_ns.metrics import view_metrics

        image = batch["image"].to(self.device)
        rgb = outputs["rgb"]
        fg_mask = batch["fg_mask"].to(self.device)
        valid = batch["valid_mask"].to(self.device) if "valid_mask" in batch else None
        metrics = view_metrics(
            rgb.permute(2, 0, 1),
            image.permute(2, 0, 1),
            mask=fg_mask.permute(2, 0, 1),
            valid=valid.permute(2, 0, 1) if valid is not None else None,
            lpips=self._lpips_metric(),
            masked=self.config.masked_eval_metrics,
        )
        images = {
            "img": torch.cat([image, rgb], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
        }
        return metrics, images

    def _lpips_metric(self):
        """LPIPS-VGG from local weights, loaded once on first use; None (one warning) when unavailable."""
        if not self._lpips_checked:
            self._lpips_checked = True
            from sparsefusion_ns.metrics import lpips_or_warn

            # Stored outside the module tree: metric weights never enter nerfstudio checkpoints.
            self._keep_outside_checkpoints("_lpips", lpips_or_warn(self.lpips_config(), device=self.device))
        return self._lpips
