"""Image metrics and LPIPS-VGG: parity with scikit-image and the `lpips` package, masking, offline errors.

The LPIPS parity tests need the `lpips` pip package (dev extra); they skip without it. No test
downloads anything: the VGG trunks are random, and the `lpips` package is built with
``pnet_rand=True`` so that it does not fetch torchvision's ImageNet weights.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sparsefusion_ns.metrics import (
    LPIPSVGG,
    LPIPSConfig,
    LPIPSWeightsNotFoundError,
    apply_metric_mask,
    load_lpips_vgg,
    lpips_or_warn,
    psnr,
    psnr_from_mse,
    ssim,
    view_metrics,
)
from sparsefusion_ns.metrics import lpips_vgg as lpips_vgg_module

# Non-square on purpose: a transposed layout changes the result instead of passing unnoticed.
HEIGHT, WIDTH = 16, 24


def _random_trunk(shapes: Dict[str, torch.Size], seed: int) -> Dict[str, torch.Tensor]:
    """He-normal conv weights and non-zero biases (so bias mistakes show), from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    trunk = {}
    for key, shape in shapes.items():
        if key.endswith("weight"):
            trunk[key] = torch.randn(shape, generator=generator) * math.sqrt(2.0 / math.prod(shape[1:]))
        else:
            trunk[key] = 0.1 * torch.randn(shape, generator=generator)
    return trunk


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> Tuple[Path, Path]:
    """A random VGG-16 trunk in torchvision's layout and random heads in the lpips package's layout."""
    folder = tmp_path_factory.mktemp("lpips_weights")
    trunk = _random_trunk({k: v.shape for k, v in LPIPSVGG().features.state_dict().items()}, seed=1)
    trunk = {f"features.{key}": value for key, value in trunk.items()}
    trunk["classifier.6.bias"] = torch.zeros(1000)  # torchvision's file has a classifier; it is ignored
    generator = torch.Generator().manual_seed(2)
    heads = {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator)
        for k, c in enumerate((64, 128, 256, 512, 512))
    }
    torch.save(trunk, folder / "vgg16.pth")
    torch.save(heads, folder / "heads.pth")
    return folder / "vgg16.pth", folder / "heads.pth"


@pytest.fixture(scope="module")
def random_lpips(weight_files) -> LPIPSVGG:
    vgg, heads = weight_files
    return load_lpips_vgg(LPIPSConfig(vgg_weights=vgg, lin_weights=heads))


def _images(n: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, HEIGHT, WIDTH, generator=generator), torch.rand(n, 3, HEIGHT, WIDTH, generator=generator)


# ----------------------------------------------------------------------------- LPIPS: parity


@pytest.fixture(scope="module")
def package_and_ours(tmp_path_factory):
    """The `lpips` package's LPIPS-VGG with a random trunk, and ours loaded from the same files."""
    lpips = pytest.importorskip("lpips", reason="needs the `lpips` package (dev extra: pip install lpips)")
    with warnings.catch_warnings():  # torchvision's deprecation warning for `pretrained=False`
        warnings.simplefilter("ignore")
        reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    # The package's trunk keys are "sliceK.N.weight", N being torchvision's `features` index.
    shapes = {key: value.shape for key, value in reference.net.state_dict().items()}
    trunk = _random_trunk(shapes, seed=3)
    reference.net.load_state_dict(trunk)
    trunk_file = tmp_path_factory.mktemp("lpips_parity") / "vgg16_torchvision_layout.pth"
    torch.save({f"features.{key.split('.', 1)[1]}": value for key, value in trunk.items()}, trunk_file)
    heads_file = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    ours = load_lpips_vgg(LPIPSConfig(vgg_weights=trunk_file, lin_weights=heads_file))
    return reference, ours, heads_file


def test_lpips_matches_package_values_and_gradients(package_and_ours):
    reference, ours, _ = package_and_ours
    images, references = _images(3, seed=4)
    images[2] = 0.0  # a black render, as the distillation's backgrounds are
    ours_images = images.clone().requires_grad_(True)
    package_images = images.clone().requires_grad_(True)

    ours_distance = ours(ours_images, references)
    package_distance = reference(package_images, references, normalize=True).view(-1)
    # Observed |ours - package| <= 2e-8 and |float32 - float64| <= 3e-8 for distances ~0.15; 1e-6
    # leaves margin for other CPU kernels while still catching any change of formula.
    torch.testing.assert_close(ours_distance, package_distance.detach(), atol=1e-6, rtol=0)
    assert ours_distance.min() > 0.01  # the comparison is not between zeros

    ours_distance.sum().backward()
    package_distance.sum().backward()
    # Gradients reach ~1e-3; observed |ours - package| <= 5e-10 and |float32 - float64| <= 2e-9.
    torch.testing.assert_close(ours_images.grad, package_images.grad, atol=1e-7, rtol=0)
    assert ours_images.grad.abs().max() > 1e-5


def test_lpips_matches_package_in_float64(package_and_ours):
    """In float64 rounding no longer hides a difference in the formula: the two agree to ~1e-15."""
    reference, ours, _ = package_and_ours
    images, references = (x.double() for x in _images(1, seed=5))
    try:
        ours_distance = ours.double()(images, references)
        package_distance = reference.double()(images, references, normalize=True).view(-1)
    finally:
        ours.float(), reference.float()
    torch.testing.assert_close(ours_distance, package_distance.detach(), atol=1e-12, rtol=0)


def test_heads_found_inside_installed_package(package_and_ours):
    _, _, heads_file = package_and_ours
    assert lpips_vgg_module._installed_lpips_heads() == heads_file


# ----------------------------------------------------------------------------- LPIPS: behaviour


def test_lpips_is_frozen_differentiable_and_symmetric(random_lpips):
    assert not random_lpips.training
    assert all(not p.requires_grad for p in random_lpips.parameters())
    images, references = _images(2, seed=6)
    images.requires_grad_(True)
    distance = random_lpips(images, references)
    assert distance.shape == (2,) and bool((distance > 0).all())
    distance.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().max() > 0
    torch.testing.assert_close(random_lpips(references, images.detach()), distance.detach())
    assert torch.equal(random_lpips(references, references), torch.zeros(2))


def test_lpips_gradient_is_finite_where_features_vanish():
    """All-zero feature vectors (here: every ReLU off) give a zero gradient, where sqrt(sum f^2) gives NaN."""
    model = LPIPSVGG()
    with torch.no_grad():
        for module in model.features:
            if isinstance(module, torch.nn.Conv2d):
                module.bias.fill_(-100.0)
    images, references = _images(1, seed=15)
    images.requires_grad_(True)
    model(images, references).sum().backward()
    assert torch.equal(images.grad, torch.zeros_like(images))


def test_lpips_rejects_mismatched_inputs(random_lpips):
    images, references = _images(1, seed=7)
    with pytest.raises(ValueError, match=r"\(n, 3, h, w\)"):
        random_lpips(images, references[:, :, :8])


# ----------------------------------------------------------------------------- LPIPS: offline errors


@pytest.fixture
def empty_torch_hub(tmp_path, monkeypatch):
    """A torch hub cache without torchvision's VGG-16 checkpoint."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)


def test_config_is_lazy_and_missing_vgg_file_is_named(tmp_path, empty_torch_hub):
    config = LPIPSConfig(vgg_weights=tmp_path / "absent_vgg.pth")  # constructing reads nothing
    with pytest.raises(LPIPSWeightsNotFoundError) as error:
        load_lpips_vgg(config)
    message = str(error.value)
    assert "absent_vgg.pth" in message and "vgg16-397923af.pth" in message and "vgg_weights" in message
    assert isinstance(error.value, FileNotFoundError)

    with pytest.raises(LPIPSWeightsNotFoundError, match="torch hub cache"):
        load_lpips_vgg(LPIPSConfig())


def test_missing_heads_file_is_named(weight_files, monkeypatch):
    vgg, _ = weight_files
    monkeypatch.setattr(lpips_vgg_module, "_installed_lpips_heads", lambda: None)
    with pytest.raises(LPIPSWeightsNotFoundError) as error:
        load_lpips_vgg(LPIPSConfig(vgg_weights=vgg))
    message = str(error.value)
    assert "v0.1/vgg.pth" in message and "pip install lpips" in message and "lin_weights" in message


def test_wrong_heads_file_is_rejected(weight_files, tmp_path):
    vgg, _ = weight_files
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth has no tensor 'lin1\.model\.1\.weight'"):
        load_lpips_vgg(LPIPSConfig(vgg_weights=vgg, lin_weights=tmp_path / "partial.pth"))


def test_lpips_or_warn_warns_once(empty_torch_hub, monkeypatch, caplog):
    monkeypatch.setattr(lpips_vgg_module, "_ALREADY_WARNED", set())
    with caplog.at_level(logging.WARNING, logger=lpips_vgg_module.__name__):
        assert lpips_or_warn(LPIPSConfig()) is None
        assert lpips_or_warn(LPIPSConfig()) is None
    assert len(caplog.records) == 1
    assert "LPIPS is skipped" in caplog.text and "vgg16-397923af.pth" in caplog.text


def test_lpips_or_warn_loads_when_files_exist(weight_files, random_lpips):
    vgg, heads = weight_files
    loaded = lpips_or_warn(LPIPSConfig(vgg_weights=vgg, lin_weights=heads))
    assert loaded is not None
    images, references = _images(1, seed=8)
    assert torch.equal(loaded(images, references), random_lpips(images, references))


# ----------------------------------------------------------------------------- PSNR and SSIM


def _numpy_hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def test_psnr_matches_scikit_image_and_its_definition():
    pred, gt = (x[0] for x in _images(1, seed=9))
    expected = peak_signal_noise_ratio(_numpy_hwc(gt), _numpy_hwc(pred), data_range=1)
    assert psnr(pred, gt) == expected
    # The definition, in float64: 10 log10(1 / MSE); the inputs are float32, hence 1e-5 dB.
    mse = ((pred.double() - gt.double()) ** 2).mean()
    assert psnr(pred, gt) == pytest.approx(float(-10 * torch.log10(mse)), abs=1e-5)


@pytest.mark.parametrize("gaussian_weights", [False, True])
def test_ssim_matches_scikit_image(gaussian_weights):
    generator = torch.Generator().manual_seed(10)
    gt = torch.rand(3, HEIGHT, WIDTH, generator=generator)
    pred = (gt + 0.2 * torch.randn(3, HEIGHT, WIDTH, generator=generator)).clamp(0, 1)
    expected = structural_similarity(
        _numpy_hwc(pred), _numpy_hwc(gt), channel_axis=-1, data_range=1, gaussian_weights=gaussian_weights
    )
    assert ssim(pred, gt, gaussian_weights=gaussian_weights) == expected
    assert 0.1 < expected < 0.99  # an informative comparison, neither identical nor unrelated images
    assert ssim(gt, gt) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- masking protocol


def _view(seed: int):
    generator = torch.Generator().manual_seed(seed)
    pred = torch.rand(3, HEIGHT, WIDTH, generator=generator)
    gt = torch.rand(3, HEIGHT, WIDTH, generator=generator)
    mask = (torch.rand(HEIGHT, WIDTH, generator=generator) > 0.3).float()
    valid = torch.zeros(HEIGHT, WIDTH)
    valid[:, : WIDTH - 6] = 1.0  # zero padding on the right
    return pred, gt, mask, valid


def test_masked_metrics_multiply_both_images_by_mask_and_valid(random_lpips):
    pred, gt, mask, valid = _view(seed=11)
    metrics = view_metrics(pred, gt, mask=mask, valid=valid, lpips=random_lpips)
    pred_m, gt_m = pred * mask * valid, gt * mask * valid
    assert metrics["psnr"] == psnr(pred_m, gt_m)
    assert metrics["ssim"] == ssim(pred_m, gt_m)
    assert metrics["lpips"] == random_lpips(pred_m[None], gt_m[None]).item()

    # Pixels outside mask * valid do not matter, in either image.
    outside = (mask * valid) == 0
    assert outside.any()
    changed_pred, changed_gt = pred.clone(), gt.clone()
    changed_pred[:, outside], changed_gt[:, outside] = 1.0, 0.5
    assert view_metrics(changed_pred, changed_gt, mask=mask, valid=valid, lpips=random_lpips) == metrics

    # A (1, h, w) mask means the same as an (h, w) one.
    assert view_metrics(pred, gt, mask=mask[None], valid=valid[None], lpips=random_lpips) == metrics


def test_unmasked_option_and_missing_lpips():
    pred, gt, mask, valid = _view(seed=12)
    unmasked = view_metrics(pred, gt, mask=mask, valid=valid, masked=False)
    assert unmasked == {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}  # no "lpips" key without a model
    assert unmasked != view_metrics(pred, gt, mask=mask, valid=valid)
    assert torch.equal(apply_metric_mask(pred), pred)  # no mask, no valid region: unchanged


def test_mask_shape_mismatch_is_an_error():
    pred, gt, mask, _ = _view(seed=13)
    with pytest.raises(ValueError, match="mask"):
        view_metrics(pred, gt, mask=mask[:-1])


def test_metrics_are_deterministic(random_lpips):
    pred, gt, mask, valid = _view(seed=14)
    first = view_metrics(pred, gt, mask=mask, valid=valid, lpips=random_lpips)
    second = view_metrics(pred.clone(), gt.clone(), mask=mask, valid=valid, lpips=random_lpips)
    assert first == second and set(first) == {"psnr", "ssim", "lpips"}


@pytest.mark.parametrize("shape", [(), (4,), (2, 3)])
def test_psnr_from_mse_matches_the_evaluation_psnr(shape):
    """The training logs' tensor PSNR and the evaluation's scikit-image PSNR are one definition."""
    pred, gt = torch.rand(*shape, 3, 8, 8), torch.rand(*shape, 3, 8, 8)
    mse = ((pred - gt) ** 2).flatten(-3).mean(-1)
    logged = psnr_from_mse(mse)
    assert logged.shape == shape
    for index in np.ndindex(*shape):
        assert float(logged[index]) == pytest.approx(psnr(pred[index], gt[index]), abs=1e-4)
    assert float(psnr_from_mse(torch.tensor(0.0))) == pytest.approx(100.0)  # clamped at 1e-10
