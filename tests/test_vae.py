"""The frozen SD-v1 VAE: ldm → diffusers key conversion, strict loading and the latent convention."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from sparsefusion_ns.teacher.state_dicts import StateDictMismatchError
from sparsefusion_ns.teacher.vae import (
    SD_V1_LATENT_SCALE,
    FrozenVAE,
    VAEConfig,
    diffusers_vae_to_ldm,
    ldm_vae_to_diffusers,
)

TINY = VAEConfig.tiny()
GROUPNORM_EPS = 1e-6  # ldm's Normalize() and diffusers' VAE blocks both use 1e-6


def random_ldm_vae_state_dict(config: VAEConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """ldm-layout weights for ``config`` drawn like the reference goldens: N(0,1)/sqrt(fan_in) for
    weights, 1 + 0.1·N(0,1) for norm gains, 0.1·N(0,1) for biases (so mapping mistakes show)."""
    generator = torch.Generator().manual_seed(seed)
    diffusers_layout = FrozenVAE(config).autoencoder.state_dict()
    shapes = {k: v.shape for k, v in diffusers_vae_to_ldm(diffusers_layout, len(config.block_out_channels)).items()}
    state = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        if len(shape) >= 2:
            state[key] = noise / math.sqrt(math.prod(shape[1:]))
        elif "norm" in key and key.endswith("weight"):
            state[key] = 1.0 + 0.1 * noise
        else:
            state[key] = 0.1 * noise
    return state


# --- an independent forward of the ldm AutoencoderKL, written from its architecture, reading ldm keys


def _conv(w, prefix, x, stride=1, padding=1):
    return F.conv2d(x, w[prefix + "weight"], w[prefix + "bias"], stride=stride, padding=padding)


def _norm(w, prefix, x, groups):
    return F.group_norm(x, groups, w[prefix + "weight"], w[prefix + "bias"], eps=GROUPNORM_EPS)


def _resnet(w, prefix, x, groups):
    h = _conv(w, prefix + "conv1.", F.silu(_norm(w, prefix + "norm1.", x, groups)))
    h = _conv(w, prefix + "conv2.", F.silu(_norm(w, prefix + "norm2.", h, groups)))
    if prefix + "nin_shortcut.weight" in w:
        x = _conv(w, prefix + "nin_shortcut.", x, padding=0)
    return x + h


def _attention(w, prefix, x, groups):
    b, c, height, width = x.shape
    h = _norm(w, prefix + "norm.", x, groups)
    q, k, v = (_conv(w, f"{prefix}{name}.", h, padding=0).reshape(b, c, -1) for name in "qkv")
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # (b, query, key)
    out = (v @ weights.transpose(1, 2)).reshape(b, c, height, width)
    return x + _conv(w, prefix + "proj_out.", out, padding=0)


def _middle(w, prefix, x, groups):
    x = _resnet(w, prefix + "mid.block_1.", x, groups)
    x = _attention(w, prefix + "mid.attn_1.", x, groups)
    return _resnet(w, prefix + "mid.block_2.", x, groups)


def ldm_reference_posterior_mean(w, config: VAEConfig, x):
    groups, levels = config.norm_num_groups, len(config.block_out_channels)
    h = _conv(w, "encoder.conv_in.", x)
    for level in range(levels):
        for block in range(config.layers_per_block):
            h = _resnet(w, f"encoder.down.{level}.block.{block}.", h, groups)
        if level != levels - 1:  # ldm pads right/bottom only, then a stride-2 valid conv
            h = _conv(w, f"encoder.down.{level}.downsample.conv.", F.pad(h, (0, 1, 0, 1)), stride=2, padding=0)
    h = _middle(w, "encoder.", h, groups)
    h = _conv(w, "encoder.conv_out.", F.silu(_norm(w, "encoder.norm_out.", h, groups)))
    moments = _conv(w, "quant_conv.", h, padding=0)
    return moments[:, : config.latent_channels]


def ldm_reference_decode(w, config: VAEConfig, z):
    groups, levels = config.norm_num_groups, len(config.block_out_channels)
    h = _conv(w, "decoder.conv_in.", _conv(w, "post_quant_conv.", z, padding=0))
    h = _middle(w, "decoder.", h, groups)
    for level in reversed(range(levels)):
        for block in range(config.layers_per_block + 1):
            h = _resnet(w, f"decoder.up.{level}.block.{block}.", h, groups)
        if level != 0:
            h = _conv(w, f"decoder.up.{level}.upsample.conv.", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _conv(w, "decoder.conv_out.", F.silu(_norm(w, "decoder.norm_out.", h, groups)))


# --- tests


def test_full_size_vae_accepts_the_sd_v1_checkpoint_layout(shared_dir):
    """keys_full.json `vae`: every `first_stage_model.*` key and shape, converted, fills our kl-f8
    exactly (strict); the rest of an SD checkpoint is ignored, as upstream."""
    entry = json.loads((shared_dir / "reference" / "keys_full.json").read_text())["vae"]
    with torch.device("meta"):
        checkpoint = {item["checkpoint_key"]: torch.empty(item["shape"]) for item in entry["state_dict"]}
        checkpoint["model.diffusion_model.input_blocks.0.0.weight"] = torch.empty(320, 4, 3, 3)
        checkpoint["cond_stage_model.transformer.text_model.final_layer_norm.bias"] = torch.empty(768)
        vae = FrozenVAE(VAEConfig.full())
    vae.load_ldm_state_dict(checkpoint)
    assert len(vae.autoencoder.state_dict()) == entry["n_state_dict_entries"]
    assert sum(p.numel() for p in vae.parameters()) == entry["param_count"]
    assert vae.config.downsampling_factor == 8


@pytest.mark.parametrize("batch, size", [(2, 32), (1, 16), (3, 24)])
def test_conversion_reproduces_the_ldm_forward(batch, size):
    """Our converter + diffusers equal an independent ldm-layout forward: this checks the meaning of
    the mapping (decoder level order, q/k/v, shortcut, norms), not only key names; over batch sizes
    and image sizes (latents of 4², 2² and 3²)."""
    weights = random_ldm_vae_state_dict(TINY)
    vae = FrozenVAE(TINY)
    vae.load_ldm_state_dict({"first_stage_model." + k: v for k, v in weights.items()})
    images = torch.rand(batch, 3, size, size)

    latents = vae.encode(images)
    expected_latents = ldm_reference_posterior_mean(weights, TINY, 2 * images - 1) * SD_V1_LATENT_SCALE
    assert latents.shape == (batch, 4, size // 8, size // 8)
    # Same maths, different float32 kernels (diffusers' attention, fused norms): observed
    # max |Δ| 6e-8 on latents (|z| ≤ 0.25) and 2e-6 on images over 3 seeds; 1e-5 leaves margin.
    torch.testing.assert_close(latents, expected_latents, atol=1e-5, rtol=1e-5)

    decoded = vae.decode(latents)
    expected_decoded = ((ldm_reference_decode(weights, TINY, latents / SD_V1_LATENT_SCALE) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(decoded, expected_decoded, atol=1e-5, rtol=1e-5)  # same origin as above


def test_encode_is_the_scaled_posterior_mean_and_decode_is_clipped():
    vae = FrozenVAE(TINY)
    images = torch.rand(1, 3, 16, 16)
    posterior = vae.autoencoder.encode(2 * images - 1).latent_dist
    torch.testing.assert_close(vae.encode(images), posterior.mean * 0.18215, rtol=0, atol=0)
    torch.testing.assert_close(vae.encode(images), vae.encode(images), rtol=0, atol=0)  # no sampling

    latents = 3.0 * torch.randn(1, 4, 2, 2)
    raw = vae.autoencoder.decode(latents / 0.18215).sample
    decoded = vae.decode(latents)
    torch.testing.assert_close(decoded, ((raw + 1) / 2).clamp(0, 1), rtol=0, atol=0)
    assert decoded.min() >= 0 and decoded.max() <= 1


def test_ldm_diffusers_round_trip_preserves_keys_and_values():
    ldm = random_ldm_vae_state_dict(TINY)
    diffusers_layout = ldm_vae_to_diffusers(ldm, levels=4)
    assert set(diffusers_layout) == set(FrozenVAE(TINY).autoencoder.state_dict())
    back = diffusers_vae_to_ldm(diffusers_layout, levels=4)
    assert set(back) == set(ldm)
    for key, value in ldm.items():
        assert torch.equal(back[key], value), key
    assert diffusers_layout["decoder.mid_block.attentions.0.to_q.weight"].shape == (16, 16)
    # ldm counts decoder levels from the image side, diffusers from the latent side
    lowest_resolution_block = diffusers_layout["decoder.up_blocks.0.resnets.1.conv1.weight"]
    assert torch.equal(lowest_resolution_block, ldm["decoder.up.3.block.1.conv1.weight"])


def test_missing_unexpected_and_misshapen_keys_are_listed():
    weights = random_ldm_vae_state_dict(TINY)
    del weights["encoder.mid.attn_1.q.weight"]
    weights["encoder.mid.attn_1.extra.weight"] = torch.zeros(1)
    weights["decoder.conv_out.bias"] = torch.zeros(4)
    with pytest.raises(StateDictMismatchError) as caught:
        FrozenVAE(TINY).load_ldm_state_dict(weights, source="fake.ckpt")
    message = str(caught.value)
    assert "fake.ckpt" in message and "AutoencoderKL(block_out_channels=(8, 8, 16, 16)" in message
    assert "encoder.mid_block.attentions.0.to_q.weight" in message  # missing
    assert "encoder.mid.attn_1.extra.weight" in message  # unexpected, passed through unconverted
    assert "decoder.conv_out.bias: found (4,), expected (3,)" in message


def test_diffusers_folder_loads_and_hub_ids_are_refused(tmp_path):
    source = FrozenVAE(TINY)
    source.load_ldm_state_dict(random_ldm_vae_state_dict(TINY, seed=3))
    source.autoencoder.save_pretrained(tmp_path / "vae")
    loaded = FrozenVAE.from_diffusers_folder(tmp_path / "vae", TINY)
    images = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded.encode(images), source.encode(images), rtol=0, atol=0)

    with pytest.raises(FileNotFoundError, match="never from a model hub"):
        FrozenVAE.from_diffusers_folder("stabilityai/sd-vae-ft-mse", TINY)  # type: ignore[arg-type]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        FrozenVAE.from_diffusers_folder(tmp_path / "empty", TINY)
    other_architecture = VAEConfig(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4)
    with pytest.raises(StateDictMismatchError, match="wrong shape"):
        FrozenVAE.from_diffusers_folder(tmp_path / "vae", other_architecture)


def test_vae_is_frozen_and_stays_in_eval_mode():
    vae = FrozenVAE(TINY)
    vae.train()
    assert not vae.training and not vae.autoencoder.training
    assert not any(p.requires_grad for p in vae.parameters())


def test_config_dict_round_trip():
    for config in (VAEConfig.full(), VAEConfig.tiny()):
        data = json.loads(json.dumps(config.to_dict()))
        assert VAEConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="unknown VAEConfig fields"):
        VAEConfig.from_dict({"ch_mult": [1, 2]})
