"""Cosine log-SNR schedule against the authors' numbers (golden_diffusion_schedule), plus its algebra."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sparsefusion_ns.teacher.diffusion_schedule import (
    CosineLogSNRSchedule,
    num_sampling_steps,
    sampling_times,
)
from sparsefusion_ns.teacher.samplers import PLMSSampler, PLMSSamplerConfig

ATOL = 1e-6  # recommended_atol of golden_diffusion_schedule.json (elementwise float32 maths)
LOG_RTOL = 1e-6  # ~8 float32 ulps (eps 1.19e-7): see test_posterior_coefficients
RTOL_NEAR_ONE = 1e-5  # README: compare alpha with a relative tolerance near t = 1 (alpha ~ 4e-8 at t = 1)


@pytest.fixture(scope="module")
def golden(shared_dir):
    path = shared_dir / "reference" / "golden_diffusion_schedule"
    return load_file(str(path.with_suffix(".safetensors"))), json.loads(path.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def schedule():
    return CosineLogSNRSchedule()


def test_grid_outputs(golden, schedule):
    tensors, _ = golden
    t = tensors["in.t_grid"]
    alpha, sigma = schedule.alpha_sigma(t)
    ours = {
        "log_snr": schedule.log_snr(t),
        "alpha": alpha,
        "sigma": sigma,
        "alpha_cumprod": schedule.alpha_cumprod(t),
        "p2_loss_weight": schedule.p2_loss_weight(t),
    }
    for name, value in ours.items():
        torch.testing.assert_close(value, tensors[f"out.{name}"], atol=ATOL, rtol=0, msg=name)
    near_one = t >= 0.99  # where alpha and alpha_cumprod are tiny, an absolute tolerance says nothing
    for name in ("alpha", "alpha_cumprod"):
        torch.testing.assert_close(
            ours[name][near_one], tensors[f"out.{name}"][near_one], atol=0, rtol=RTOL_NEAR_ONE, msg=name
        )


@pytest.mark.parametrize("layout", ["flat", "rows", "one at a time"])
def test_grid_outputs_do_not_depend_on_the_batch_shape(golden, schedule, layout):
    """The schedule is elementwise: the golden grid reshaped, or fed one 0-d time at a time, gives the
    golden values at the same tolerance."""
    tensors, _ = golden
    t = tensors["in.t_grid"].flatten()
    names = ("log_snr", "alpha_cumprod", "p2_loss_weight")
    functions = {name: getattr(schedule, name) for name in names}
    for name, function in functions.items():
        expected = tensors[f"out.{name}"].flatten()
        if layout == "one at a time":
            ours = torch.stack([function(value) for value in t])
        elif layout == "rows":
            rows = 2 if len(t) % 2 == 0 else 1
            ours = function(t.reshape(rows, -1))
            assert ours.shape == (rows, len(t) // rows)
        else:
            ours = function(t)
        torch.testing.assert_close(ours.flatten(), expected, atol=ATOL, rtol=0, msg=name)


def test_log_snr_at_one_is_the_float32_value(schedule):
    # golden_diffusion_schedule.json notes: float32 gives -33.891315 (float64 would give -74.66)
    assert schedule.log_snr(1.0).item() == pytest.approx(-33.891315, abs=1e-5)
    assert schedule.log_snr(torch.tensor(1.0, dtype=torch.float64)).dtype == torch.float32


def test_plms_time_grids(golden, schedule):
    tensors, meta = golden
    sampler = PLMSSampler(PLMSSamplerConfig(authors_quirks=True), schedule)
    latent = torch.zeros(1, 1, 1, 1)

    def zero_denoiser(x, log_snr, cond):
        return torch.zeros_like(x)

    sequences = meta["plms_sequences"]
    assert len(sequences) == 9
    for key, entry in sequences.items():
        t, n_steps = entry["max_thres"], entry["n_steps"]
        assert sampler.num_steps(t) == n_steps, key
        if t < 0.99:
            assert num_sampling_steps(t) == n_steps, key
        expected = tensors[entry["sequence_key"]].flatten()
        start = 1.0 if t >= 0.99 else t  # the authors' t >= 0.99 branch runs on linspace(1, 0, 51)
        torch.testing.assert_close(sampling_times(start, n_steps), expected, atol=ATOL, rtol=0, msg=key)
        # the grid the sampler actually visits
        visited = sampler.sample(zero_denoiser, None, t, x_start=latent).times
        torch.testing.assert_close(visited, expected, atol=ATOL, rtol=0, msg=key)


def test_step_rule_python_float_rounding():
    assert num_sampling_steps(0.29) == 28  # int(0.29 * 50 * 2) = int(28.999999999999996)
    assert num_sampling_steps(0.005) == 0
    assert num_sampling_steps(0.005, min_steps=1) == 1
    assert num_sampling_steps(0.77) == 50
    assert num_sampling_steps(0.3, max_steps=10) == 6


@pytest.mark.parametrize("key", ["t0p5", "t0p99"])
def test_posterior_coefficients(golden, schedule, key):
    tensors, _ = golden
    times = tensors[f"out.plms_times.{key}"].flatten()
    posterior = schedule.q_posterior(times[:-1], times[1:])
    ours = {
        "coef_x_t": posterior.coef_x_t,
        "coef_x_start": posterior.coef_x0,
        "variance": posterior.variance,
        "log_variance_clipped": posterior.log_variance_clipped,
        "std_used": posterior.std,
    }
    for name, value in ours.items():
        expected = tensors[f"out.posterior.{key}.{name}"].flatten()
        # log() of float32 differs by a few ulps between torch's vectorised CPU kernels (the ISA
        # decides which runs): measured 1.43e-6 absolute on log-variances near -4.4 (3.3e-7
        # relative, 3 ulps), so the log-variance also gets a relative tolerance of ~8 ulps.
        rtol = LOG_RTOL if name == "log_variance_clipped" else 0
        torch.testing.assert_close(value, expected, atol=ATOL, rtol=rtol, msg=name)


def test_q_sample_and_x0_prediction_invert_each_other(schedule):
    x0 = torch.randn(3, 4, 8, 8)
    noise = torch.randn(3, 4, 8, 8)
    t = torch.tensor([0.1, 0.5, 0.9])
    x_t = schedule.q_sample(x0, t, noise)
    alpha, sigma = schedule.alpha_sigma(t)
    torch.testing.assert_close(x_t[1], alpha[1] * x0[1] + sigma[1] * noise[1])
    torch.testing.assert_close(schedule.predict_x0_from_eps(x_t, t, noise), x0, atol=1e-5, rtol=0)
    # a Python float time is shared by the batch
    torch.testing.assert_close(schedule.q_sample(x0, 0.5, noise)[1], x_t[1])


def test_x0_prediction_is_clipped(schedule):
    x_t = torch.full((1, 4, 2, 2), 3.0)
    x0 = schedule.predict_x0_from_eps(x_t, 0.999, torch.zeros_like(x_t))  # 3 / alpha(0.999) ≈ 1900
    assert torch.all(x0 == schedule.config.x0_clip)


def test_posterior_mean_is_the_coefficient_combination(schedule):
    x_t, x0 = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t, t_next = torch.tensor([0.6, 0.3]), torch.tensor([0.5, 0.2])
    posterior = schedule.q_posterior(t, t_next)
    expected = posterior.coef_x_t.view(2, 1, 1, 1) * x_t + posterior.coef_x0.view(2, 1, 1, 1) * x0
    torch.testing.assert_close(posterior.mean(x_t, x0), expected, atol=1e-6, rtol=1e-6)
    # c = 1 - SNR(t) / SNR(t_next), and the variance is sigma_next^2 c (VDM eq. 33)
    snr, snr_next = schedule.log_snr(t).exp(), schedule.log_snr(t_next).exp()
    torch.testing.assert_close(posterior.c, 1 - snr / snr_next)
    torch.testing.assert_close(posterior.variance, schedule.alpha_sigma(t_next)[1] ** 2 * posterior.c)
