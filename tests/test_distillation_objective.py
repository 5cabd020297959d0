"""Step (B)'s losses, the PLMS target, the EFT cache and the cost counters, on a tiny random teacher."""

from __future__ import annotations

import math

import pytest
import torch

from sparsefusion_ns.distillation.callbacks import perceptual_loss_needed, phase_at
from sparsefusion_ns.distillation.config import DistillationConfig
from sparsefusion_ns.distillation.counters import COST_NAMES, TeacherCounters
from sparsefusion_ns.distillation.novel_cameras import look_at_cameras
from sparsefusion_ns.distillation.objective import (
    bootstrap_losses,
    denoised_target,
    diffusion_losses,
    eft_silhouette,
    sample_start_time,
)
from sparsefusion_ns.distillation.state import DistillationState
from sparsefusion_ns.distillation.teacher_cache import TeacherCache
from sparsefusion_ns.losses import pseudo_huber
from sparsefusion_ns.metrics import LPIPSVGG
from sparsefusion_ns.teacher.bundle import Teacher
from sparsefusion_ns.teacher.samplers import PLMSSampler, PLMSSamplerConfig
from tests.torch_threads import torch_threads


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return Teacher.tiny(seed=0)


@pytest.fixture(autouse=True)
def single_thread():
    """One torch thread: on a small shared CPU, competing OpenMP threads make the UNet many times slower."""
    with torch_threads(1):
        yield


def _render(teacher: Teacher, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    size = teacher.config.eft.image_size
    generator = torch.Generator().manual_seed(seed)
    rgb = torch.rand(1, 3, size, size, generator=generator).requires_grad_(True)
    opacity = torch.rand(1, 1, size, size, generator=generator).requires_grad_(True)
    return rgb, opacity


def _features(teacher: Teacher, seed: int = 1) -> torch.Tensor:
    g, c = teacher.config.eft.grid_size, teacher.config.eft.d_model
    return torch.randn(1, c, g, g, generator=torch.Generator().manual_seed(seed))


def test_phase_switches_after_the_bootstrap_iterations_as_the_authors():
    config = DistillationConfig()  # authors: `if itr > start_fusion_step (1000)` → diffusion, itr 0-based
    assert phase_at(0, config) == "bootstrap"
    assert phase_at(1000, config) == "bootstrap"
    assert phase_at(1001, config) == "diffusion"
    assert phase_at(2999, config) == "diffusion"
    # LPIPS is needed only by a run that reaches a diffusion step, and only with the term on
    assert not perceptual_loss_needed(config, last_step=1000)
    assert perceptual_loss_needed(config, last_step=1001)
    assert not perceptual_loss_needed(DistillationConfig(use_perceptual_loss=False), last_step=2999)


def test_start_times_are_uniform_below_the_maximum():
    generator = torch.Generator().manual_seed(0)
    times = torch.tensor([sample_start_time(generator, 0.99) for _ in range(4000)])
    assert float(times.min()) >= 0.0 and float(times.max()) < 0.99
    # mean and spread of U(0, 0.99): 0.495 and 0.99/sqrt(12); 5 standard errors (0.286/sqrt(4000)·5 ≈ 0.023)
    assert float(times.mean()) == pytest.approx(0.495, abs=0.023)
    assert float(times.std()) == pytest.approx(0.99 / math.sqrt(12), abs=0.02)


@pytest.mark.parametrize("t", [0.005, 0.05, 0.29, 0.5, 0.77])
def test_plms_step_count_follows_the_authors_formula(teacher, t):
    rgb, _ = _render(teacher, 0)
    sampler = PLMSSampler(PLMSSamplerConfig(max_steps=50), teacher.schedule)
    target = denoised_target(teacher, sampler, rgb, _features(teacher), t, torch.Generator().manual_seed(0))
    steps = min(math.floor(t * 50 * 2), 50)  # min(⌊100 t⌋, 50) as written upstream (t = 0.29 → 28)
    # every step evaluates the UNet once, plus one extra evaluation in the first (improved Euler) step;
    # with the authors' quirks off, t < 0.01 still runs one step
    assert target.num_unet_evals == max(steps, 1) + 1
    assert target.image.shape == rgb.shape
    assert float(target.image.min()) >= 0 and float(target.image.max()) <= 1


def test_authors_quirk_runs_no_step_below_t_0_01(teacher):
    rgb, _ = _render(teacher, 0)
    sampler = PLMSSampler(PLMSSamplerConfig(max_steps=50, authors_quirks=True), teacher.schedule)
    target = denoised_target(teacher, sampler, rgb, _features(teacher), 0.005, torch.Generator().manual_seed(0))
    assert target.num_unet_evals == 0


@pytest.mark.parametrize("t, alpha_cumprod", [(0.25, 0.847), (0.5, 0.494), (0.75, 0.144)])
def test_l1_weight_is_one_minus_alpha_cumprod(teacher, t, alpha_cumprod):
    rgb, opacity = _render(teacher, 0)
    sampler = PLMSSampler(PLMSSamplerConfig(max_steps=4), teacher.schedule)
    target = denoised_target(teacher, sampler, rgb, _features(teacher), t, torch.Generator().manual_seed(0))
    assert target.alpha_cumprod == pytest.approx(
        alpha_cumprod, abs=1e-3
    )  # docs/method.md#noise-schedule gives 3 decimals
    losses = diffusion_losses(rgb, opacity, target, DistillationConfig(), lpips=None)
    expected = (1 - alpha_cumprod) * (rgb - target.image).abs().mean()
    assert float(losses["novel_l1_loss"].detach()) == pytest.approx(float(expected.detach()), rel=2e-3)
    expected_opacity = 1e-3 * torch.sqrt(opacity**2 + 0.01).mean()
    assert float(losses["novel_opacity_loss"].detach()) == pytest.approx(float(expected_opacity.detach()))
    assert set(losses) == {"novel_l1_loss", "novel_opacity_loss"}  # no LPIPS term without LPIPS


def test_gradients_reach_only_the_render(teacher):
    rgb, opacity = _render(teacher, 0)
    sampler = PLMSSampler(PLMSSamplerConfig(max_steps=50), teacher.schedule)
    with torch.enable_grad():
        target = denoised_target(teacher, sampler, rgb, _features(teacher), 0.3, torch.Generator().manual_seed(0))
    assert not target.image.requires_grad and target.image.grad_fn is None
    lpips = LPIPSVGG().requires_grad_(False).eval()  # random weights: only its gradient path matters here
    losses = diffusion_losses(rgb, opacity, target, DistillationConfig(), lpips=lpips)
    assert set(losses) == {"novel_l1_loss", "novel_opacity_loss", "novel_perceptual_loss"}
    sum(losses.values()).backward()
    assert rgb.grad is not None and float(rgb.grad.abs().sum()) > 0
    assert opacity.grad is not None and float(opacity.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training and not any(m.training for m in teacher.modules())
    # the L1 gradient treats the target as a constant: d/dÎ (1 − ᾱ) mean|Î − Ĩ| = (1 − ᾱ) sign(Î − Ĩ)/N
    rgb.grad = None
    diffusion_losses(rgb, opacity, target, DistillationConfig(), lpips=None)["novel_l1_loss"].backward()
    expected = (1 - target.alpha_cumprod) * torch.sign(rgb.detach() - target.image) / rgb.numel()
    torch.testing.assert_close(rgb.grad, expected, rtol=1e-5, atol=1e-12)


def test_denoised_target_is_reproducible_from_the_generator(teacher):
    rgb, _ = _render(teacher, 0)
    sampler = PLMSSampler(PLMSSamplerConfig(max_steps=8), teacher.schedule)
    first = denoised_target(teacher, sampler, rgb, _features(teacher), 0.6, torch.Generator().manual_seed(4))
    again = denoised_target(teacher, sampler, rgb, _features(teacher), 0.6, torch.Generator().manual_seed(4))
    other = denoised_target(teacher, sampler, rgb, _features(teacher), 0.6, torch.Generator().manual_seed(5))
    torch.testing.assert_close(first.image, again.image, rtol=0, atol=0)
    assert float((first.image - other.image).abs().max()) > 1e-4


def test_bootstrap_targets_the_eft_colour_and_its_silhouette():
    eft = torch.zeros(1, 3, 8, 8)
    eft[..., 2:6, 2:6] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]  # mean 0.4 inside, 0 outside
    eft[0, :, 0, 0] = torch.tensor([0.2, 0.05, 0.0])  # mean 0.083: below the threshold
    silhouette = eft_silhouette(eft, 0.1)
    assert float(silhouette.sum()) == 16 and float(silhouette[..., 0, 0].sum()) == 0
    config = DistillationConfig()
    # a render equal to the targets costs only the opacity term
    perfect = bootstrap_losses(eft, silhouette, eft, config, huber_scale=0.1)
    assert float(perfect["novel_rgb_loss"]) == 0 and float(perfect["novel_mask_loss"]) == 0
    assert float(perfect["novel_opacity_loss"]) == pytest.approx(1e-3 * float(torch.sqrt(silhouette**2 + 0.01).mean()))
    black = bootstrap_losses(torch.zeros_like(eft), torch.zeros_like(silhouette), eft, config, huber_scale=0.1)
    assert float(black["novel_rgb_loss"]) == pytest.approx(float(pseudo_huber(torch.zeros_like(eft), eft, 0.1).mean()))
    inside = float(pseudo_huber(torch.zeros(1), torch.ones(1), 0.1))  # 16 of the 64 pixels are inside
    assert float(black["novel_mask_loss"]) == pytest.approx(inside * 16 / 64)


def _cache_inputs(teacher: Teacher):
    size = teacher.config.eft.image_size
    eyes = torch.tensor([[3.0, 0.5, 0.0], [0.0, 0.5, 3.0], [-3.0, 0.5, 0.5], [2.0, 1.0, -2.0], [-1.0, 1.5, -2.5]])
    up = torch.tensor([0.0, 1.0, 0.0])
    cameras = look_at_cameras(eyes, torch.zeros(3), up, torch.full((2,), 2.0), torch.zeros(2))
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    return images, cameras[:3], cameras


def test_cache_computes_each_camera_once_within_its_budget(teacher):
    images, inputs, pool = _cache_inputs(teacher)
    state = DistillationState(seed=0)
    counters = TeacherCounters(state, torch.device("cpu"))
    cache = TeacherCache(teacher.eft, images, inputs, pool, depth_center=3.0, max_bytes=2**20, counters=counters)
    assert cache.warm_up() == 5
    assert counters.current.eft_queries == 5 and counters.current.teacher_seconds > 0
    first = cache[3]
    assert counters.current.eft_queries == 5  # a hit: no new query
    g, c = teacher.config.eft.grid_size, teacher.config.eft.d_model
    assert first.rgb.shape == (3, g, g) and first.features.shape == (c, g, g)
    torch.testing.assert_close(first.rgb, teacher.eft.query(images, inputs, pool[3], 3.0)[0], rtol=0, atol=0)
    # a budget of two entries: least recently used entries are dropped and recomputed identically
    entry_bytes = first.num_bytes
    small = TeacherCache(teacher.eft, images, inputs, pool, 3.0, max_bytes=2 * entry_bytes, counters=counters)
    assert small.warm_up() == 2 and small.cached_bytes == 2 * entry_bytes
    before = counters.current.eft_queries
    for index in (0, 1, 4, 0):
        view = small[index]
    assert counters.current.eft_queries - before == 2  # 0 and 1 hit; 4 evicts 0; 0 is recomputed
    assert small.is_cached(4) and small.is_cached(0) and not small.is_cached(1)
    torch.testing.assert_close(view.features, cache[0].features, rtol=0, atol=0)


def test_counters_accumulate_into_checkpointed_totals():
    state = DistillationState(seed=0)
    counters = TeacherCounters(state, torch.device("cpu"))
    with counters.timed() as cost:
        cost.unet_evals += 31
        cost.vae_encodes += 1
    done = counters.finish_iteration(step=0, log=False)
    assert done.unet_evals == 31 and done.teacher_seconds > 0
    counters.current.unet_evals += 5
    counters.current.vae_decodes += 2
    counters.finish_iteration(step=1, log=False)
    totals = counters.totals()
    assert (totals.unet_evals, totals.vae_encodes, totals.vae_decodes, totals.eft_queries) == (36, 1, 2, 0)
    assert counters.current.unet_evals == 0
    assert state.totals.shape == (len(COST_NAMES),)
    # the totals live in the state's buffers: a model checkpoint carries them
    restored = DistillationState(seed=0)
    restored.load_state_dict(state.state_dict())
    assert TeacherCounters(restored, torch.device("cpu")).totals() == totals


def test_random_stream_continues_across_a_state_round_trip():
    state = DistillationState(seed=3)
    generator = state.generator()
    torch.rand(5, generator=generator)
    state.store(generator)
    expected = torch.rand(4, generator=generator)
    restored = DistillationState(seed=99)
    restored.load_state_dict(state.state_dict())
    torch.testing.assert_close(torch.rand(4, generator=restored.generator()), expected, rtol=0, atol=0)
    assert restored.rng_state.dtype == torch.uint8
