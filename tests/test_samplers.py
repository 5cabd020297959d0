"""PLMS and DDIM samplers: behaviour with stand-in denoisers, and the authors' PLMS runs (golden_plms)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sparsefusion_ns.teacher.diffusion_schedule import CosineLogSNRSchedule
from sparsefusion_ns.teacher.samplers import (
    DDIMSampler,
    DDIMSamplerConfig,
    NoiseStream,
    PLMSSampler,
    PLMSSamplerConfig,
)
from tests.torch_threads import torch_threads

SHAPE = (2, 4, 8, 8)


def linear_denoiser(x, log_snr, cond):
    """A fixed affine stand-in for the UNet: depends on the latent, the log-SNR and the condition."""
    return 0.3 * x + 0.01 * log_snr.view(-1, 1, 1, 1) + 0.2 * cond


class RecordingDenoiser:
    """Wraps a denoiser and keeps every (x, log_snr, cond) it was called with."""

    def __init__(self, denoiser=linear_denoiser):
        self.denoiser = denoiser
        self.calls = []

    def __call__(self, x, log_snr, cond):
        self.calls.append((x.clone(), log_snr.clone(), cond))
        return self.denoiser(x, log_snr, cond)


@pytest.fixture
def latents():
    generator = torch.Generator().manual_seed(7)
    return torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)


# --- step counts and evaluation counts ---------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "steps_quirks", "steps_default"),
    [
        (0.005, 0, 1),
        (0.013, 1, 1),
        (0.05, 5, 5),
        (0.29, 28, 28),
        (0.5, 50, 50),
        (0.98, 50, 50),
        (0.995, 50, 50),
    ],
)
def test_plms_step_and_evaluation_counts(latents, t, steps_quirks, steps_default):
    x_start, cond = latents
    for quirks, steps in ((True, steps_quirks), (False, steps_default)):
        sampler = PLMSSampler(PLMSSamplerConfig(authors_quirks=quirks))
        assert sampler.num_steps(t) == steps
        denoiser = RecordingDenoiser()
        out = sampler.sample(denoiser, cond, t, x_start=x_start, record_steps=True)
        # step 0 evaluates the network twice (improved Euler), every later step once
        expected_evals = steps + 1 if steps else 0
        assert out.num_denoiser_evals == len(denoiser.calls) == expected_evals
        assert len(out.steps) == steps and out.times.shape == (steps + 1,)


@pytest.mark.parametrize(
    ("t", "proportional", "steps"), [(0.005, True, 1), (0.3, True, 6), (0.9, True, 10), (0.05, False, 10)]
)
def test_ddim_step_and_evaluation_counts(latents, t, proportional, steps):
    x_start, cond = latents
    sampler = DDIMSampler(DDIMSamplerConfig(max_steps=10, steps_proportional_to_t=proportional))
    denoiser = RecordingDenoiser()
    out = sampler.sample(denoiser, cond, t, x_start=x_start)
    assert sampler.num_steps(t) == steps
    assert out.num_denoiser_evals == len(denoiser.calls) == steps


# --- the authors' quirks -----------------------------------------------------------------------


def test_quirks_high_t_start_from_the_clean_latent_at_t_one(latents):
    x_start, cond = latents
    schedule = CosineLogSNRSchedule()
    quirky, plain = RecordingDenoiser(), RecordingDenoiser()
    quirks_on = PLMSSampler(PLMSSamplerConfig(authors_quirks=True))
    out_quirky = quirks_on.sample(quirky, cond, 0.995, x_start=x_start)
    out_plain = PLMSSampler().sample(plain, cond, 0.995, x_start=x_start)

    first_x, first_log_snr, _ = quirky.calls[0]
    assert torch.equal(first_x, x_start)  # the clean latent, labelled t = 1
    torch.testing.assert_close(first_log_snr, schedule.log_snr(1.0).expand(2))
    assert out_quirky.times[0].item() == 1.0

    first_x, first_log_snr, _ = plain.calls[0]
    assert torch.equal(first_x, out_plain.x_t)  # the noised latent at the start time
    torch.testing.assert_close(first_log_snr, schedule.log_snr(0.995).expand(2))
    assert out_plain.times[0].item() == pytest.approx(0.995)
    # both report the noised latent and ᾱ at the requested start time
    torch.testing.assert_close(out_quirky.alpha_cumprod, schedule.alpha_cumprod(0.995).expand(2))
    assert not torch.equal(out_quirky.x0, out_plain.x0)


def test_quirks_low_t_return_the_noisy_latent(latents):
    x_start, cond = latents
    generator_seed = 3
    quirky = PLMSSampler(PLMSSamplerConfig(authors_quirks=True)).sample(
        linear_denoiser, cond, 0.005, x_start=x_start, noise=torch.Generator().manual_seed(generator_seed)
    )
    assert quirky.num_denoiser_evals == 0
    assert torch.equal(quirky.x0, quirky.x_t.clamp(-10, 10))

    plain = PLMSSampler().sample(
        linear_denoiser, cond, 0.005, x_start=x_start, noise=torch.Generator().manual_seed(generator_seed)
    )
    assert torch.equal(plain.x_t, quirky.x_t)  # same noising draw
    assert plain.num_denoiser_evals == 2
    assert not torch.allclose(plain.x0, plain.x_t)


def test_quirks_high_t_need_the_clean_latent(latents):
    x_t, cond = latents
    with pytest.raises(ValueError, match="x_start"):
        PLMSSampler(PLMSSamplerConfig(authors_quirks=True)).sample(linear_denoiser, cond, 0.99, x_t=x_t)


# --- interface ---------------------------------------------------------------------------------


def test_start_arguments_are_checked(latents):
    x, cond = latents
    sampler = PLMSSampler()
    with pytest.raises(ValueError, match="exactly one"):
        sampler.sample(linear_denoiser, cond, 0.5)
    with pytest.raises(ValueError, match="exactly one"):
        sampler.sample(linear_denoiser, cond, 0.5, x_start=x, x_t=x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sampler.sample(linear_denoiser, cond, 1.5, x_t=x)


def test_denoiser_gets_per_sample_log_snr_and_the_condition(latents):
    x_t, cond = latents
    denoiser = RecordingDenoiser()
    out = PLMSSampler().sample(denoiser, cond, 0.05, x_t=x_t, record_steps=True)
    schedule = CosineLogSNRSchedule()
    # step 0: (x_t, t0) then the half step at t1; later steps one call at their start time
    call_times = [out.times[0], out.times[1], *out.times[1:-1]]
    for (x, log_snr, passed_cond), t in zip(denoiser.calls, call_times, strict=True):
        assert x.shape == SHAPE and passed_cond is cond
        assert log_snr.shape == (2,)
        torch.testing.assert_close(log_snr, schedule.log_snr(t).expand(2))
    assert torch.equal(out.steps[0].eps, linear_denoiser(x_t, schedule.log_snr(0.05).expand(2), cond))
    assert torch.equal(out.steps[-1].x.clamp(-10, 10), out.x0)


# --- randomness --------------------------------------------------------------------------------


def test_generator_seed_reproduces_and_matches_injected_draws(latents):
    x_start, cond = latents
    sampler = PLMSSampler()
    t = 0.2  # 20 steps: 1 noising draw + 1 half-step draw + 20 update draws
    first = sampler.sample(linear_denoiser, cond, t, x_start=x_start, noise=torch.Generator().manual_seed(11))
    second = sampler.sample(linear_denoiser, cond, t, x_start=x_start, noise=torch.Generator().manual_seed(11))
    other = sampler.sample(linear_denoiser, cond, t, x_start=x_start, noise=torch.Generator().manual_seed(12))
    assert torch.equal(first.x0, second.x0)
    assert not torch.allclose(first.x0, other.x0)

    generator = torch.Generator().manual_seed(11)
    draws = [torch.randn(SHAPE, generator=generator) for _ in range(22)]
    injected = sampler.sample(linear_denoiser, cond, t, x_start=x_start, noise=draws)
    assert torch.equal(injected.x0, first.x0)
    remaining = iter(draws)
    from_callable = sampler.sample(linear_denoiser, cond, t, x_start=x_start, noise=lambda like: next(remaining))
    assert torch.equal(from_callable.x0, first.x0)
    with pytest.raises(ValueError, match="needs more"):
        sampler.sample(linear_denoiser, cond, t, x_start=x_start, noise=draws[:21])


def test_posterior_noise_changes_every_step_but_the_last(latents):
    x_t, cond = latents
    sampler = PLMSSampler()
    zeros = [torch.zeros(SHAPE)] * 6  # t = 0.05: 5 steps, 1 half-step + 5 update draws
    base = sampler.sample(linear_denoiser, cond, 0.05, x_t=x_t, noise=zeros).x0
    for index in range(6):
        draws = list(zeros)
        draws[index] = torch.ones(SHAPE)
        changed = not torch.equal(sampler.sample(linear_denoiser, cond, 0.05, x_t=x_t, noise=draws).x0, base)
        assert changed == (index < 5), index  # the last update is deterministic


def test_noise_stream_rejects_wrong_shapes():
    stream = NoiseStream([torch.zeros(1, 4, 2, 2)])
    with pytest.raises(ValueError, match="shape"):
        stream.next(torch.zeros(2, 4, 2, 2))


# --- DDIM --------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.02, 0.3, 0.9])
def test_ddim_with_the_true_noise_recovers_x0(latents, t):
    x_start, noise = latents
    schedule = CosineLogSNRSchedule()
    x_t = schedule.q_sample(x_start, t, noise)

    def oracle(x, log_snr, cond):
        # the ε that explains x as α x_0 + σ ε for the true x_0
        alpha, sigma = torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()
        return (x - alpha.view(-1, 1, 1, 1) * x_start) / sigma.view(-1, 1, 1, 1)

    out = DDIMSampler(DDIMSamplerConfig(max_steps=8)).sample(oracle, None, t, x_t=x_t, noise=[])
    torch.testing.assert_close(out.x0, x_start, atol=1e-4, rtol=0)  # float32 round-off over a few steps


def test_ddim_eta_zero_is_deterministic_and_eta_one_uses_noise(latents):
    x_t, cond = latents
    deterministic = DDIMSampler(DDIMSamplerConfig(max_steps=10))
    a = deterministic.sample(linear_denoiser, cond, 0.4, x_t=x_t, noise=torch.Generator().manual_seed(1))
    b = deterministic.sample(linear_denoiser, cond, 0.4, x_t=x_t, noise=torch.Generator().manual_seed(2))
    assert torch.equal(a.x0, b.x0)
    stochastic = DDIMSampler(DDIMSamplerConfig(max_steps=10, eta=1.0))
    c = stochastic.sample(linear_denoiser, cond, 0.4, x_t=x_t, noise=torch.Generator().manual_seed(1))
    d = stochastic.sample(linear_denoiser, cond, 0.4, x_t=x_t, noise=torch.Generator().manual_seed(2))
    assert not torch.allclose(c.x0, d.x0)


# --- the authors' PLMS runs (golden_plms) with the real UNet ------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """The 2-million-parameter golden UNet runs fastest single-threaded; with several OpenMP threads
    on a busy shared machine its 51-evaluation runs get an order of magnitude slower."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def golden_unet(shared_dir):
    from sparsefusion_ns.teacher.unet import VLDMUNet, VLDMUNetConfig, load_authors_state_dict

    reference = shared_dir / "reference"
    meta = json.loads((reference / "golden_unet.json").read_text())
    args = meta["reduced_config"]["unet_constructor_args_as_written"]
    config = VLDMUNetConfig(
        dim=args["dim"],
        dim_mults=tuple(args["dim_mults"]),
        num_resnet_blocks=tuple(args["num_resnet_blocks"]),
        layer_attns=tuple(args["layer_attns"]),
        latent_channels=args["channels"],
        cond_channels=args["cond_images_channels"],
    )
    tensors = load_file(str(reference / "golden_unet.safetensors"))
    # golden_plms reuses exactly these weights (float16 on disk, float32 in the run)
    weights = {k.removeprefix("weights."): v for k, v in tensors.items() if k.startswith("weights.")}
    return load_authors_state_dict(VLDMUNet(config), weights).eval()


@pytest.fixture(scope="module")
def golden_plms(shared_dir):
    return load_file(str(shared_dir / "reference" / "golden_plms.safetensors"))


def _run_golden(golden_unet, golden_plms, run, t, quirks, **start):
    sampler = PLMSSampler(PLMSSamplerConfig(authors_quirks=quirks))
    noise = list(golden_plms[f"in.{run}.noise_used"])
    if "x_t" in start:
        noise = noise[1:]  # noise_used[0] made x_t
    else:
        start = {"x_start": golden_plms[f"in.{run}.x_start"]}
    return sampler.sample(golden_unet, golden_plms[f"in.{run}.cond_images"], t, noise=noise, record_steps=True, **start)


def test_golden_plms_t0p5_with_every_step(golden_unet, golden_plms):
    out = _run_golden(golden_unet, golden_plms, "t0p5", 0.5, quirks=False)
    atol = 1e-3  # golden_plms.json recommended_atol t0p5 (observed 7e-6 run-to-run, 2e-5 vs float64)
    torch.testing.assert_close(out.x_t, golden_plms["out.t0p5.x_noisy"], atol=atol, rtol=0)
    torch.testing.assert_close(out.alpha_cumprod, golden_plms["out.t0p5.alpha_cumprod"], atol=1e-6, rtol=0)
    assert out.num_denoiser_evals == 51
    step_t = torch.tensor([[s.t, s.t_next] for s in out.steps])
    for b in range(2):  # golden step_t is (step, batch, [t, t_next])
        torch.testing.assert_close(step_t, golden_plms["out.t0p5.step_t"][:, b], atol=1e-6, rtol=0)
    torch.testing.assert_close(
        torch.stack([s.eps for s in out.steps]), golden_plms["out.t0p5.step_e_t"], atol=atol, rtol=0
    )
    torch.testing.assert_close(
        torch.stack([s.x for s in out.steps]), golden_plms["out.t0p5.step_img"], atol=atol, rtol=0
    )
    torch.testing.assert_close(out.x0, golden_plms["out.t0p5.x0"], atol=atol, rtol=0)


def test_golden_plms_t0p05_from_x_start_and_from_x_t(golden_unet, golden_plms):
    atol = 1e-4  # golden_plms.json recommended_atol t0p05
    from_clean = _run_golden(golden_unet, golden_plms, "t0p05", 0.05, quirks=False)
    from_noisy = _run_golden(
        golden_unet, golden_plms, "t0p05", 0.05, quirks=False, x_t=golden_plms["out.t0p05.x_noisy"]
    )
    for out in (from_clean, from_noisy):
        assert out.num_denoiser_evals == 6
        torch.testing.assert_close(out.x_t, golden_plms["out.t0p05.x_noisy"], atol=atol, rtol=0)
        torch.testing.assert_close(out.x0, golden_plms["out.t0p05.x0"], atol=atol, rtol=0)


def test_golden_plms_t0p99_authors_branch(golden_unet, golden_plms):
    out = _run_golden(golden_unet, golden_plms, "t0p99", 0.99, quirks=True)
    # golden_plms.json: ~1e-3 against float32 implementations (clipping-dominated; observed 9e-5
    # run-to-run); this branch starts from the clean latent at t = 1
    torch.testing.assert_close(out.x0, golden_plms["out.t0p99.x0"], atol=1e-3, rtol=0)
    torch.testing.assert_close(out.x_t, golden_plms["out.t0p99.x_noisy"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.alpha_cumprod, golden_plms["out.t0p99.alpha_cumprod"], atol=1e-6, rtol=0)
    assert out.times[0].item() == 1.0 and out.num_denoiser_evals == 51
