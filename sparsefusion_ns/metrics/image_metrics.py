"""Per-view image metrics with SparseFusion's evaluation protocol: PSNR, SSIM and LPIPS-VGG.

PSNR and SSIM are scikit-image's, called exactly as the authors' evaluation calls them:
``peak_signal_noise_ratio(gt, pred, data_range=1)`` and
``structural_similarity(pred, gt, channel_axis=-1, data_range=1)`` on float32 ``h x w x 3``
arrays. scikit-image's SSIM defaults apply: a 7 x 7 uniform window, sample covariance,
K1 = 0.01, K2 = 0.03, the SSIM map averaged over each channel after cropping a 3-pixel border,
then over the three channels (``gaussian_weights=True`` switches to its 11-tap Gaussian window,
sigma 1.5).

Masking protocol (``masked=True``, the default): before any metric, the prediction AND the ground
truth are both multiplied, pixel-wise and for every channel, by ``mask * valid``, where ``mask`` is
the foreground mask and ``valid`` is the unpadded region of the crop (1 inside, 0 in the
zero-padding). Every pixel still counts in the averages: masked-out pixels are black in both
images, so they contribute zero error to PSNR and take part in SSIM's windows as zeros.
``masked=False`` compares the images as given.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from jaxtyping import Float
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import Tensor

from sparsefusion_ns.metrics.lpips_vgg import LPIPSVGG


def _as_plane(weights: Float[Tensor, "*c h w"], name: str) -> Float[Tensor, "1 h w"]:
    """A mask given as (h, w) or (1, h, w) as a (1, h, w) float tensor."""
    if weights.dim() == 2:
        weights = weights[None]
    if weights.dim() != 3 or weights.shape[0] != 1:
        raise ValueError(f"{name} must have shape (h, w) or (1, h, w), got {tuple(weights.shape)}.")
    return weights.float()


def apply_metric_mask(
    image: Float[Tensor, "3 h w"],
    mask: Optional[Float[Tensor, "*c h w"]] = None,
    valid: Optional[Float[Tensor, "*c h w"]] = None,
) -> Float[Tensor, "3 h w"]:
    """``image * mask * valid`` (a missing factor counts as 1): the evaluation's masking."""
    for factor, name in ((mask, "mask"), (valid, "valid")):
        if factor is not None:
            factor = _as_plane(factor, name)
            if factor.shape[-2:] != image.shape[-2:]:
                raise ValueError(
                    f"{name} is {tuple(factor.shape[-2:])} pixels but the image is {tuple(image.shape[-2:])}."
                )
            image = image * factor.to(image.device)
    return image


def _to_numpy_hwc(image: Float[Tensor, "3 h w"]) -> np.ndarray:
    """float32 ``h x w x 3`` array, the layout and precision of the authors' evaluation."""
    return image.detach().to("cpu", torch.float32).permute(1, 2, 0).numpy()


def _check_pair(pred: Tensor, gt: Tensor) -> None:
    if pred.dim() != 3 or pred.shape[0] != 3 or pred.shape != gt.shape:
        raise ValueError(
            f"expected a prediction and a ground truth of the same shape (3, h, w), "
            f"got {tuple(pred.shape)} and {tuple(gt.shape)}."
        )


def psnr_from_mse(mse: Float[Tensor, "*batch"]) -> Float[Tensor, "*batch"]:
    """PSNR in dB, ``−10 log10(MSE)`` (data range 1), of mean squared errors already computed, as a
    tensor on their device (no synchronisation): the training logs' figure (a ray batch's colours,
    an autoencoder's reconstructions). MSE is clamped at 1e-10 (at most 100 dB)."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def psnr(pred: Float[Tensor, "3 h w"], gt: Float[Tensor, "3 h w"]) -> float:
    """PSNR in dB of images in [0, 1]: ``10 log10(1 / MSE)`` over all pixels and channels (the
    evaluation's figure: scikit-image's, as the authors compute it)."""
    _check_pair(pred, gt)
    return float(peak_signal_noise_ratio(_to_numpy_hwc(gt), _to_numpy_hwc(pred), data_range=1.0))


def ssim(pred: Float[Tensor, "3 h w"], gt: Float[Tensor, "3 h w"], gaussian_weights: bool = False) -> float:
    """scikit-image's mean SSIM of images in [0, 1] (7 x 7 uniform window unless `gaussian_weights`)."""
    _check_pair(pred, gt)
    return float(
        structural_similarity(
            _to_numpy_hwc(pred), _to_numpy_hwc(gt), channel_axis=-1, data_range=1.0, gaussian_weights=gaussian_weights
        )
    )


def view_metrics(
    pred: Float[Tensor, "3 h w"],
    gt: Float[Tensor, "3 h w"],
    mask: Optional[Float[Tensor, "*c h w"]] = None,
    valid: Optional[Float[Tensor, "*c h w"]] = None,
    lpips: Optional[LPIPSVGG] = None,
    masked: bool = True,
    ssim_gaussian_weights: bool = False,
) -> Dict[str, float]:
    """All metrics of one view: ``{"psnr", "ssim"}`` plus ``"lpips"`` when an `lpips` model is given.

    Args:
        pred: rendered image in [0, 1].
        gt: ground-truth image in [0, 1].
        mask: foreground mask, (h, w) or (1, h, w); None counts as all ones.
        valid: valid (unpadded) region, (h, w) or (1, h, w); None counts as all ones.
        lpips: a loaded LPIPS-VGG (see `lpips_or_warn`); None leaves the ``"lpips"`` key out.
        masked: multiply both images by ``mask * valid`` first (the paper's protocol).
        ssim_gaussian_weights: scikit-image's Gaussian SSIM window instead of the 7 x 7 uniform one.
    """
    _check_pair(pred, gt)
    if masked:
        pred, gt = apply_metric_mask(pred, mask, valid), apply_metric_mask(gt, mask, valid)
    metrics = {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt, gaussian_weights=ssim_gaussian_weights)}
    if lpips is not None:
        device = lpips.shift.device
        with torch.no_grad():
            distance = lpips(pred[None].to(device, torch.float32), gt[None].to(device, torch.float32))
        metrics["lpips"] = float(distance.item())
    return metrics
