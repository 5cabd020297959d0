"""Epipolar Feature Transformer (EFT): SparseFusion's feed-forward view-conditioned features.

For each ray of a query camera the EFT samples ``D`` points at depths ``t_1..t_D``, projects
them into the ``V`` input views, reads image features there, and reduces them with three
transformers (after GPNR, Suhail et al. 2022) to a colour and a 256-d feature per ray:

- **T1** (per 3D point, attends across views): reference ray Plücker + depth + image feature.
- **T2** (per view and ray, attends across the ``D`` depths): query ray + reference ray + depth +
  T1 output; pooled over depth with softmax weights ``w2 = softmax_D(t2_attn(f2))``.
- **T3** (per ray, attends across views): query ray + reference ray of the middle sample +
  pooled T2 output; pooled over views with ``w3 = softmax_V(t3_attn(f3))`` to ``f``.
- colour ``c = sigmoid(color_layer(f))``. The feature map ``f`` conditions the VLDM.

Everything runs in the *query frame*: the query camera at the origin with identity rotation
(see :meth:`NDCCameras.relative_to`). Module and parameter names match the authors'
``ckpt_latest_eft.pt`` ``model_state_dict`` (278 entries) so released checkpoints load strictly.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal, Mapping

import torch
import torch.nn.functional as F
import torchvision
from jaxtyping import Float
from torch import Tensor, nn

from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras, ndc_ray_grid, query_rays
from sparsefusion_ns.teacher.harmonic_embedding import HarmonicEmbedding, plucker
from sparsefusion_ns.teacher.state_dicts import check_state_dict, state_dict_shapes
from sparsefusion_ns.utils.config_dicts import DictConfig

#: Channels of the multi-scale ResNet-18 feature: stem 64 + layer1 64 + layer2 128 + layer3 256.
RESNET18_FEATURE_CHANNELS = 512
#: Number of ``state_dict`` entries of the released EFT (ResNet-18 incl. the unused layer4/fc and
#: BatchNorm buffers, plus T1/T2/T3 and the three heads).
RELEASED_STATE_DICT_ENTRIES = 278


@dataclass
class EFTConfig(DictConfig):
    """Hyper-parameters of the EFT. Defaults are the released ones (:meth:`full`)."""

    d_model: int = 256
    """Width of the three transformers and of the output feature ``f``."""
    n_layers: int = 4
    """Post-norm encoder layers per transformer."""
    n_heads: int = 1
    """Attention heads per layer."""
    ff: int = 256
    """Hidden width of each layer's feed-forward block (ReLU)."""
    dropout: float = 0.1
    """Dropout inside the transformer layers; active only in training mode."""
    n_harmonic: int = 6
    """Harmonic frequencies ``2^0 .. 2^(n-1)``: Plücker 6 -> 6(2n+1), depth 1 -> 2n+1 values."""
    omega0: float = 1.0
    """Base frequency multiplying all harmonic frequencies."""
    n_points_per_ray: int = 20
    """Samples ``D`` per query ray, uniform in depth."""
    depth_half_range: float = 5.0
    """Samples cover view depths ``[d - r, d + r]`` with ``d`` the mean input-camera distance."""
    grid_size: int = 32
    """Query rays form a ``grid_size``^2 grid (the VLDM latent resolution for 256^2 images)."""
    image_size: int = 256
    """Side of the square input images; sets the half-pixel margin of the query ray grid."""
    backbone: Literal["resnet18"] = "resnet18"
    """Image encoder: torchvision's ResNet-18, as released (built with ``weights=None``)."""
    keep_unused_backbone_layers: bool = True
    """Keep ResNet-18's ``layer4`` and ``fc``: the forward pass never uses them, but the released
    checkpoints hold them (strict loading needs them). False drops them (8.9 M parameters), as the
    ``mini`` teacher does to stay small on disk."""
    rays_per_chunk: int = 64
    """Rays processed together (upstream: 16 chunks of the 32^2 grid); does not change results."""
    encoder_batch_statistics: bool = False
    """Authors' quirk. Upstream never calls ``eval()`` on the EFT, so its ResNet BatchNorm layers
    normalise with the statistics of the current batch of input views. True reproduces that
    (deterministically, leaving the running statistics untouched); False (default) uses the
    stored running statistics, i.e. a proper eval-mode encoder. Upstream's dropout at inference
    is random and is not reproduced."""

    def __post_init__(self) -> None:
        if self.backbone != "resnet18":
            raise ValueError(f"EFTConfig.backbone={self.backbone!r}: only 'resnet18' is supported")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"EFTConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    @classmethod
    def full(cls) -> EFTConfig:
        """The released SparseFusion hyper-parameters."""
        return cls()

    @classmethod
    def tiny(cls) -> EFTConfig:
        """Small transformers, few rays and samples, 32^2 images: for fast CPU tests."""
        return cls(
            d_model=16, n_layers=1, ff=16, n_harmonic=2, n_points_per_ray=4,
            grid_size=4, image_size=32, rays_per_chunk=6,
        )  # fmt: skip

    @classmethod
    def mini(cls) -> EFTConfig:
        """The CPU-trainable teacher's EFT (docs/mini_teacher.md): 64² images, a 16² ray grid,
        64-d features, 2 layers per transformer, 8 points per ray over depths d̄ ± 2.5 (the synthetic
        category's objects span about ±1.5 units around a point 4.5–6 units from the cameras), no
        unused ResNet layers."""
        return cls(
            d_model=64, n_layers=2, ff=64, n_points_per_ray=8, depth_half_range=2.5, grid_size=16,
            image_size=64, keep_unused_backbone_layers=False,
        )  # fmt: skip


@dataclass
class EFTOutput:
    """Per-ray EFT outputs for ``n`` rays, ``v`` input views and ``d`` samples per ray."""

    rgb: Float[Tensor, "n 3"]
    """Colour ``c = sigmoid(color_layer(f))``."""
    features: Float[Tensor, "n c"]
    """View-pooled feature ``f`` (the VLDM condition)."""
    depth_weights: Float[Tensor, "v n d"]
    """T2 pooling weights over the samples of each ray (softmax over ``d``)."""
    view_weights: Float[Tensor, "v n"]
    """T3 pooling weights over the input views (softmax over ``v``)."""
    coarse_rgb: Float[Tensor, "n 3"]
    """Upstream's auxiliary colour: the sampled input RGB pooled with the same weights."""


class RayTransformer(nn.Module):
    """``Linear(d_in, d_model) + GELU`` followed by post-norm encoder layers (sequence-first)."""

    def __init__(self, d_in: int, config: EFTConfig) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.Linear(d_in, config.d_model), nn.GELU())
        layer = nn.TransformerEncoderLayer(config.d_model, config.n_heads, config.ff, config.dropout, activation="relu")
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)

    def forward(self, x: Float[Tensor, "s b e"]) -> Float[Tensor, "s b c"]:
        """Attend across the sequence dimension ``s`` independently for each batch entry ``b``."""
        return self.encoder(self.pre(x))


class EpipolarFeatureTransformer(nn.Module):
    """SparseFusion's EFT; ``state_dict`` keys match the authors' ``ckpt_latest_eft.pt``."""

    def __init__(self, config: EFTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EFTConfig.full()
        self.harmonic_embedding = HarmonicEmbedding(config.n_harmonic, config.omega0)
        # the whole torchvision ResNet-18 (layer4 and fc are unused but in the released checkpoint)
        self.encoder_model = torchvision.models.resnet18(weights=None)
        if not config.keep_unused_backbone_layers:
            del self.encoder_model.layer4, self.encoder_model.fc

        ray_dim = self.harmonic_embedding.output_dim(6)  # Plücker (d, o x d): 78
        depth_dim = self.harmonic_embedding.output_dim(1)  # depth t: 13
        patch_dim = RESNET18_FEATURE_CHANNELS + 3  # image feature + RGB: 515
        self.t1 = RayTransformer(ray_dim + depth_dim + patch_dim, config)
        self.t2 = RayTransformer(2 * ray_dim + depth_dim + config.d_model, config)
        self.t2_attn = nn.Linear(config.d_model, 1)
        self.t3 = RayTransformer(2 * ray_dim + config.d_model, config)
        self.t3_attn = nn.Linear(config.d_model, 1)
        self.color_layer = nn.Sequential(nn.Linear(config.d_model, 3), nn.Sigmoid())

    # ------------------------------------------------------------------------------ encoder
    def encode(self, images: Float[Tensor, "v 3 h w"]) -> Float[Tensor, "v 512 h/2 w/2"]:
        """Multi-scale ResNet-18 features of the input views, all at half resolution.

        ``images`` are RGB in [0, 1] (masked, black background) with no ImageNet normalisation.
        Stem, layer1, layer2 and layer3 outputs are bilinearly resized (``align_corners=True``)
        to the stem's H/2 x W/2 and concatenated.
        """
        resnet = self.encoder_model
        with _batchnorm_batch_statistics(resnet, self.config.encoder_batch_statistics):
            x = resnet.relu(resnet.bn1(resnet.conv1(images)))
            latents = [x]
            x = resnet.layer1(resnet.maxpool(x))
            latents.append(x)
            x = resnet.layer2(x)
            latents.append(x)
            x = resnet.layer3(x)
            latents.append(x)
        size = latents[0].shape[-2:]
        latents = [F.interpolate(z, size, mode="bilinear", align_corners=True) for z in latents]
        return torch.cat(latents, dim=1)

    # --------------------------------------------------------------------- per-point inputs
    def sample_features(
        self,
        latent: Float[Tensor, "v c h w"],
        images: Float[Tensor, "v 3 H W"],
        cameras: NDCCameras,
        points: Float[Tensor, "p 3"],
    ) -> Float[Tensor, "v p c+3"]:
        """Image feature and RGB of every point in every input view (bilinear, border padding).

        PyTorch3D NDC has +x left and +y up while ``grid_sample`` has +x right and +y down,
        hence the sign flip of the projected coordinates.
        """
        xy_ndc = cameras.transform_points_ndc(points)[..., :2]
        grid = -xy_ndc[:, :, None, :]  # (v, p, 1, 2)

        def sample(maps: Tensor) -> Tensor:
            values = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)
            return values[..., 0].transpose(1, 2)  # (v, p, channels)

        return torch.cat([sample(latent), sample(images)], dim=-1)

    def ray_inputs(
        self,
        latent: Float[Tensor, "v c h w"],
        images: Float[Tensor, "v 3 H W"],
        cameras: NDCCameras,
        origins: Float[Tensor, "n 3"],
        directions: Float[Tensor, "n 3"],
        lengths: Float[Tensor, "n d"],
    ) -> tuple[
        Float[Tensor, "n e"],
        Float[Tensor, "v n d e"],
        Float[Tensor, "n d k"],
        Float[Tensor, "v n d f"],
    ]:
        """The embedded inputs of :meth:`forward_points` for query rays ``o + t * dir``.

        Returns (query Plücker embedding, reference Plücker embedding, depth embedding, sampled
        features). The reference ray of a point ``x`` in view ``i`` runs from that camera's
        centre ``C_i`` to ``x``.
        """
        n, d = lengths.shape
        points = origins[:, None, :] + lengths[..., None] * directions[:, None, :]  # (n, d, 3)
        features = self.sample_features(latent, images, cameras, points.reshape(-1, 3))
        features = features.reshape(len(cameras), n, d, -1)

        # Camera geometry and harmonic embeddings stay in float32 under autocast: torch.cross refuses
        # mixed dtypes, and sin/cos of 32·x lose their precision in bfloat16.
        with torch.autocast(device_type=origins.device.type, enabled=False):
            centres = cameras.camera_centers().float()[:, None, None, :].expand(-1, n, d, -1)
            points = points.float()
            reference = plucker(centres, points[None] - centres)
            query = plucker(origins.float(), directions.float())
            embed = self.harmonic_embedding
            return embed(query), embed(reference), embed(lengths.float()[..., None]), features

    # -------------------------------------------------------------------- transformer stack
    def forward_points(
        self,
        query_plucker: Float[Tensor, "n e"],
        reference_plucker: Float[Tensor, "v n d e"],
        depth_embedding: Float[Tensor, "n d k"],
        features: Float[Tensor, "v n d f"],
    ) -> EFTOutput:
        """The T1 -> T2 -> T3 stack on embedded per-point inputs (no cameras involved)."""
        v, n, d, _ = reference_plucker.shape
        depth = depth_embedding[None].expand(v, -1, -1, -1)
        query = query_plucker[None, :, None, :].expand(v, -1, d, -1)

        # T1: sequence = views, batch = (ray, sample)
        t1_in = torch.cat([reference_plucker, depth, features], dim=-1)
        f1 = self.t1(t1_in.reshape(v, n * d, -1)).reshape(v, n, d, -1)

        # T2: sequence = samples, batch = (view, ray). The memory layouts (a contiguous input,
        # a permuted view of the output) follow upstream so that results match it bit-for-bit.
        t2_in = torch.cat([query, reference_plucker, depth, f1], dim=-1)
        t2_in = t2_in.reshape(v * n, d, -1).transpose(0, 1).contiguous()
        f2 = self.t2(t2_in).reshape(d, v, n, -1).permute(1, 2, 0, 3)
        w2 = torch.softmax(self.t2_attn(f2), dim=2)  # (v, n, d, 1), over depth
        f2 = (f2 * w2).sum(dim=2)

        # T3: sequence = views, batch = rays; the reference ray of the middle sample
        t3_in = torch.cat([query[:, :, 0], reference_plucker[:, :, d // 2], f2], dim=-1)
        f3 = self.t3(t3_in)
        w3 = torch.softmax(self.t3_attn(f3), dim=0)  # (v, n, 1), over views
        f = (f3 * w3).sum(dim=0)

        sampled_rgb = features[..., -3:]
        coarse_rgb = ((sampled_rgb * w2).sum(dim=2) * w3).sum(dim=0).clamp(0.0, 1.0)
        return EFTOutput(
            rgb=self.color_layer(f),
            features=f,
            depth_weights=w2[..., 0],
            view_weights=w3[..., 0],
            coarse_rgb=coarse_rgb,
        )

    # ---------------------------------------------------------------------------- full path
    def forward(
        self,
        input_images: Float[Tensor, "v 3 h w"],
        input_cameras: NDCCameras,
        origins: Float[Tensor, "n 3"],
        directions: Float[Tensor, "n 3"],
        lengths: Float[Tensor, "n d"],
        rays_per_chunk: int | None = None,
    ) -> EFTOutput:
        """EFT outputs for query rays ``o + t * dir`` (``t`` in ``lengths``), all in one frame.

        ``directions`` need not be normalised (``lengths`` are measured in their units). Rays
        are processed ``rays_per_chunk`` at a time (default ``config.rays_per_chunk``); rays
        never interact, so chunking does not change the result.
        """
        if len(input_cameras) != input_images.shape[0]:
            raise ValueError(f"{input_images.shape[0]} input images but {len(input_cameras)} input cameras")
        latent = self.encode(input_images)
        chunk = rays_per_chunk or self.config.rays_per_chunk
        outputs = [
            self.forward_points(*self.ray_inputs(latent, input_images, input_cameras, o, dirs, t))
            for o, dirs, t in zip(origins.split(chunk), directions.split(chunk), lengths.split(chunk))
        ]
        return EFTOutput(
            rgb=torch.cat([o.rgb for o in outputs]),
            features=torch.cat([o.features for o in outputs]),
            depth_weights=torch.cat([o.depth_weights for o in outputs], dim=1),
            view_weights=torch.cat([o.view_weights for o in outputs], dim=1),
            coarse_rgb=torch.cat([o.coarse_rgb for o in outputs]),
        )

    @torch.no_grad()
    def query(
        self,
        input_images: Float[Tensor, "v 3 h w"],
        input_cameras: NDCCameras,
        query_camera: NDCCameras,
        depth_center: float | Tensor | None = None,
        pixel_grid: int | None = None,
    ) -> tuple[Float[Tensor, "3 g g"], Float[Tensor, "c g g"]]:
        """Colour and feature maps (``g = config.grid_size``) of a query camera, without gradient.

        ``pixel_grid = n`` queries a denser (or sparser) grid instead: one ray through every pixel
        centre of an ``n``² image of the query camera (``g = n``). The EFT treats rays independently,
        so this renders its colour at any resolution (the EFT baseline of the evaluation does so at
        the evaluation image size); the VLDM condition is always the default ``grid_size``² map.

        ``input_images`` are the masked input views in [0, 1] (``image_size``^2); cameras are
        given in any common world frame. The EFT runs in the query frame
        (``relative_to`` the query camera). Sample depths are ``[d - r, d + r]`` along view-z,
        ``r = config.depth_half_range``. As upstream, the centre ``d`` is measured in the
        *caller's world frame* (before moving to the query frame), as the mean distance of the
        camera centres from the world origin; by default over the input cameras (upstream
        averages over all cameras of the evaluated sequence), or ``depth_center`` if given.
        """
        if self.training:
            raise RuntimeError(
                "EpipolarFeatureTransformer.query() needs eval mode: call model.eval() first "
                "(upstream's dropout at inference is random and is not reproduced)"
            )
        size = self.config.image_size
        if tuple(input_images.shape[-2:]) != (size, size):
            raise ValueError(
                f"input images are {tuple(input_images.shape[-2:])}, the EFT config expects "
                f"{size}x{size} (EFTConfig.image_size)"
            )
        if len(query_camera) != 1:
            raise ValueError(f"query() takes exactly one query camera, got {len(query_camera)}")
        if depth_center is None:
            depth_center = input_cameras.camera_centers().norm(dim=-1).mean()

        cameras = NDCCameras.cat([query_camera, input_cameras]).relative_to(0)
        r = self.config.depth_half_range
        if pixel_grid is None:
            g = self.config.grid_size
            xy = ndc_ray_grid(g, size).to(input_images)
        else:
            g = pixel_grid
            xy = ndc_ray_grid(g, g).to(input_images)  # the half-pixel margin of an n² image: pixel centres
        origins, directions = query_rays(cameras[0], xy)
        lengths = torch.linspace(float(depth_center) - r, float(depth_center) + r, self.config.n_points_per_ray).to(
            input_images
        )
        out = self.forward(
            input_images,
            cameras[1:],
            origins.reshape(-1, 3),
            directions.reshape(-1, 3),
            lengths.expand(g * g, -1),
        )
        return out.rgb.T.reshape(3, g, g), out.features.T.reshape(-1, g, g)


@contextmanager
def _batchnorm_batch_statistics(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Within the context, BatchNorm layers of ``module`` normalise with batch statistics.

    Training mode without tracking: the batch is normalised by its own mean and variance and
    neither the running statistics nor ``num_batches_tracked`` change. Modes are restored after.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)] if enabled else []
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, (training, track) in zip(norms, saved):
            m.training, m.track_running_stats = training, track


def load_authors_state_dict(model: EpipolarFeatureTransformer, state_dict: Mapping[str, Tensor]) -> None:
    """Strictly load an authors' EFT ``model_state_dict`` (``ckpt_latest_eft.pt``) into ``model``.

    Raises :class:`~sparsefusion_ns.teacher.state_dicts.StateDictMismatchError` naming the
    missing/unexpected keys and mismatched shapes (the expected architecture is SparseFusion's EFT:
    ResNet-18 + T1/T2/T3, 278 entries) instead of loading partially. Floating tensors are cast to the
    model's dtype (e.g. float16 -> float32).
    """
    expected = state_dict_shapes(model)
    check_state_dict(
        expected,
        state_dict,
        architecture="SparseFusion's Epipolar Feature Transformer (ResNet-18 encoder_model.* + t1/t2/t3 + "
        f"t2_attn/t3_attn/color_layer; {len(expected)} entries for this config, {RELEASED_STATE_DICT_ENTRIES} "
        "for the released one)",
        source="the EFT state dict",
        hint="Pass the 'model_state_dict' of ckpt_latest_eft.pt (not ckpt_latest.pt, which holds the VLDM) and an "
        "EFTConfig matching it.",
    )
    model.load_state_dict(dict(state_dict), strict=True)
