"""Image metrics (PSNR, SSIM, LPIPS-VGG) and the LPIPS-VGG perceptual loss, all offline."""

from sparsefusion_ns.metrics.image_metrics import apply_metric_mask, psnr, psnr_from_mse, ssim, view_metrics
from sparsefusion_ns.metrics.lpips_vgg import (
    LPIPSVGG,
    LPIPSConfig,
    LPIPSWeightsNotFoundError,
    load_lpips_vgg,
    lpips_or_warn,
    resolve_lpips_weights,
)

__all__ = [
    "LPIPSConfig",
    "LPIPSVGG",
    "LPIPSWeightsNotFoundError",
    "apply_metric_mask",
    "load_lpips_vgg",
    "lpips_or_warn",
    "psnr",
    "psnr_from_mse",
    "resolve_lpips_weights",
    "ssim",
    "view_metrics",
]
