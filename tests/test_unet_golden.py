"""VLDM UNet: key layout of the released checkpoint, the upstream golden forward, and the loader."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sparsefusion_ns.teacher.state_dicts import StateDictMismatchError
from sparsefusion_ns.teacher.unet import (
    VLDMUNet,
    VLDMUNetConfig,
    load_authors_state_dict,
)
from sparsefusion_ns.teacher.unet_blocks import GainLayerNorm

RELEASED_PARAM_COUNT = 400_675_357  # keys_full.json vldm.param_count_unet


@pytest.fixture(scope="module")
def golden(shared_dir):
    path = shared_dir / "reference" / "golden_unet"
    return load_file(str(path.with_suffix(".safetensors"))), json.loads(path.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def golden_model(golden):
    tensors, meta = golden
    args = meta["reduced_config"]["unet_constructor_args_as_written"]
    config = VLDMUNetConfig(
        dim=args["dim"],
        dim_mults=tuple(args["dim_mults"]),
        num_resnet_blocks=tuple(args["num_resnet_blocks"]),
        layer_attns=tuple(args["layer_attns"]),
        latent_channels=args["channels"],
        cond_channels=args["cond_images_channels"],
    )
    weights = {k.removeprefix("weights."): v for k, v in tensors.items() if k.startswith("weights.")}
    return load_authors_state_dict(VLDMUNet(config), weights).eval()


def test_full_size_matches_released_checkpoint_layout(shared_dir):
    entries = json.loads((shared_dir / "reference" / "keys_full.json").read_text())["vldm"]["state_dict"]
    reference = {e["key"]: tuple(e["shape"]) for e in entries}
    assert len(reference) == 477
    with torch.device("meta"):
        model = VLDMUNet(VLDMUNetConfig.full())
    ours = {"unets.0." + k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == reference
    assert sum(p.numel() for p in model.parameters()) == RELEASED_PARAM_COUNT
    # The loader accepts the prefixed checkpoint keys as they are.
    with torch.device("meta"):
        fake_checkpoint = {key: torch.empty(shape) for key, shape in reference.items()}
    load_authors_state_dict(model, fake_checkpoint)


def _intermediate_module(name: str) -> str:
    """Golden hook name → our module path (module paths equal upstream's)."""
    level_slots = {
        "downs": {"attn_block_out": "3", "post_downsample_out": "4"},
        "ups": {"attn_block_out": "2", "upsample_out": "3"},
    }
    parts = name.split(".")
    if parts[0] in level_slots:
        return f"{parts[0]}.{parts[1]}.{level_slots[parts[0]][parts[2]]}"
    return name


def test_golden_forward_and_intermediates(golden, golden_model):
    tensors, meta = golden
    atol = meta["tolerance"]["recommended_atol"]  # 1e-4; observed 2e-6 run-to-run, 9e-6 vs float64
    names = sorted(k.removeprefix("out.inter.") for k in tensors if k.startswith("out.inter."))
    assert len(names) == 25
    captured: dict[str, torch.Tensor] = {}
    handles = [
        golden_model.get_submodule(_intermediate_module(name)).register_forward_hook(
            lambda _module, _args, output, name=name: captured.__setitem__(name, output)
        )
        for name in names
    ]
    try:
        with torch.no_grad():
            eps = golden_model(tensors["in.x_noisy"], tensors["in.time"], tensors["in.cond_images"])
    finally:
        for handle in handles:
            handle.remove()
    for name in names:
        torch.testing.assert_close(captured[name], tensors[f"out.inter.{name}"], rtol=0, atol=atol, msg=name)
    torch.testing.assert_close(eps, tensors["out.pred_noise"], rtol=0, atol=atol)


@pytest.mark.parametrize("order", [[0], [1], [1, 0], [0, 0, 1]], ids=str)
def test_golden_forward_of_any_batch(golden, golden_model, order):
    """Samples are independent: any batch of the golden inputs (one, reordered, repeated) gives their
    golden outputs."""
    tensors, meta = golden
    atol = meta["tolerance"]["recommended_atol"]
    index = torch.tensor(order)
    x, log_snr, cond = tensors["in.x_noisy"][index], tensors["in.time"][index], tensors["in.cond_images"][index]
    with torch.no_grad():
        eps = golden_model(x, log_snr, cond)
    torch.testing.assert_close(eps, tensors["out.pred_noise"][index], rtol=0, atol=atol)


def test_condition_dropout_equals_zeroed_condition(golden, golden_model):
    tensors, _ = golden
    x, log_snr, cond = tensors["in.x_noisy"], tensors["in.time"], tensors["in.cond_images"]
    drop = torch.tensor([True, False])
    with torch.no_grad():
        dropped = golden_model(x, log_snr, cond, cond_drop_mask=drop)
        zeroed = golden_model(x, log_snr, torch.cat([torch.zeros_like(cond[:1]), cond[1:]]))
    torch.testing.assert_close(dropped, zeroed, rtol=0, atol=0)
    # the kept sample is the golden one; the dropped one really changed
    torch.testing.assert_close(dropped[1], tensors["out.pred_noise"][1], rtol=0, atol=1e-4)
    assert (dropped[0] - tensors["out.pred_noise"][0]).abs().max() > 1e-2


def _tiny_inputs(config: VLDMUNetConfig, batch: int = 2, size: int = 8):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, config.latent_channels, size, size, generator=generator)
    cond = torch.randn(batch, config.cond_channels, size, size, generator=generator)
    log_snr = torch.tensor([4.0, -3.0])[:batch]
    return x, log_snr, cond


def _randomise(model: VLDMUNet) -> VLDMUNet:
    """The final conv starts at zero (ε̂ = 0), which would zero every other gradient; perturb it."""
    torch.nn.init.normal_(model.final_conv.weight, std=0.1)
    return model


def test_tiny_forward_backward():
    config = VLDMUNetConfig.tiny()
    model = _randomise(VLDMUNet(config))
    x, log_snr, cond = _tiny_inputs(config)
    eps = model(x, log_snr, cond, cond_drop_mask=model.sample_cond_drop_mask(2))
    assert eps.shape == x.shape
    eps.square().mean().backward()
    frozen = {"null_conditional_embed", "null_conditional_hidden"}
    for name, param in model.named_parameters():
        if name in frozen:
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith("init_conv"))


def test_untrained_model_predicts_zero_noise():
    config = VLDMUNetConfig.tiny()
    x, log_snr, cond = _tiny_inputs(config)
    assert torch.count_nonzero(VLDMUNet(config)(x, log_snr, cond)) == 0


def test_bfloat16_model_accepts_float32_inputs():
    config = VLDMUNetConfig.tiny()
    model = _randomise(VLDMUNet(config)).eval()
    x, log_snr, cond = _tiny_inputs(config)
    with torch.no_grad():
        reference = model(x, log_snr, cond)
        low = model.to(torch.bfloat16)(x, log_snr, cond)
    assert low.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits; through ~40 layers errors stay well below 10 % of the scale.
    assert (low.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_scalar_log_snr_is_broadcast():
    config = VLDMUNetConfig.tiny()
    model = _randomise(VLDMUNet(config)).eval()
    x, _, cond = _tiny_inputs(config)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor(1.5), cond), model(x, torch.full((2,), 1.5), cond))


def test_loader_accepts_prefixed_unprefixed_and_checkpoint_dicts():
    config = VLDMUNetConfig.tiny()
    # float16-representable weights, as in the goldens, so that the float16 variant is lossless
    source = _randomise(VLDMUNet(config)).half().float().eval()
    x, log_snr, cond = _tiny_inputs(config)
    with torch.no_grad():
        expected = source(x, log_snr, cond)
    plain = source.state_dict()
    prefixed = {"unets.0." + k: v.half() for k, v in plain.items()}
    for state in (plain, prefixed, {"model_state_dict": prefixed}):
        torch.manual_seed(123)
        target = load_authors_state_dict(VLDMUNet(config), state).eval()
        with torch.no_grad():
            torch.testing.assert_close(target(x, log_snr, cond), expected, rtol=0, atol=0)


def test_loader_reports_mismatches_clearly():
    config = VLDMUNetConfig.tiny()
    model = VLDMUNet(config)
    state = {"unets.0." + k: v for k, v in model.state_dict().items()}
    del state["unets.0.final_conv.bias"]
    state["unets.0.some.extra.weight"] = torch.zeros(1)
    state["unets.0.init_conv.convs.0.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(StateDictMismatchError) as info:
        load_authors_state_dict(model, state)
    message = str(info.value)
    assert "missing (1):\n    final_conv.bias" in message
    assert "unexpected (1):\n    some.extra.weight" in message
    assert "wrong shape (1):\n    init_conv.convs.0.weight: found (1, 2, 3, 3)" in message
    assert "SparseFusion VLDM UNet" in message and "dim=8" in message

    full_keys = {f"unets.0.k{i}": torch.zeros(1) for i in range(20)}
    with pytest.raises(StateDictMismatchError, match=r"unexpected \(20\):\n    k0\n(.|\n)*… and 8 more"):
        load_authors_state_dict(model, full_keys)


def test_config_json_round_trip_and_validation():
    config = VLDMUNetConfig.tiny()
    restored = VLDMUNetConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config and isinstance(restored.dim_mults, tuple)
    with pytest.raises(ValueError, match="unknown VLDMUNetConfig fields"):
        VLDMUNetConfig.from_dict({**config.to_dict(), "text_embed_dim": 1024})
    with pytest.raises(ValueError, match="one entry per level"):
        VLDMUNetConfig(layer_attns=(False, True))


def test_gain_layer_norm_eps_depends_on_dtype():
    # float32 uses eps 1e-5, every other dtype 1e-3 (reference README, notes for re-implementers).
    x = torch.tensor([[0.0, 0.01]], dtype=torch.float64)  # variance 2.5e-5, comparable to both eps
    norm = GainLayerNorm(2).double()
    expected64 = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-3)
    expected32 = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5)
    torch.testing.assert_close(norm(x), expected64)
    torch.testing.assert_close(norm.float()(x.float()), expected32.float())
