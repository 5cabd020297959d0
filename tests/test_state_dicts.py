"""One state-dict checker and one error type for every teacher component."""

from __future__ import annotations

import pytest
import torch

from sparsefusion_ns.teacher import eft, unet
from sparsefusion_ns.teacher.state_dicts import StateDictMismatchError, check_state_dict, state_dict_shapes
from sparsefusion_ns.teacher.vae import FrozenVAE, VAEConfig


def _with_extra_key(model: torch.nn.Module) -> dict:
    return {**model.state_dict(), "extra.weight": torch.zeros(1)}


@pytest.mark.parametrize(
    "load",
    [
        lambda: eft.load_authors_state_dict(
            model := eft.EpipolarFeatureTransformer(eft.EFTConfig.tiny()), _with_extra_key(model)
        ),
        lambda: unet.load_authors_state_dict(
            model := unet.VLDMUNet(unet.VLDMUNetConfig.tiny()), _with_extra_key(model)
        ),
        lambda: (vae := FrozenVAE(VAEConfig.tiny())).load_diffusers_state_dict(_with_extra_key(vae.autoencoder)),
    ],
    ids=["eft", "unet", "vae"],
)
def test_every_component_raises_the_one_error_type(load):
    with pytest.raises(StateDictMismatchError, match=r"unexpected \(1\):\n    extra.weight") as caught:
        load()
    assert isinstance(caught.value, ValueError)  # callers catching ValueError keep working


def test_matching_tensors_pass_and_the_hint_ends_the_message():
    module = torch.nn.Linear(3, 2)
    check_state_dict(state_dict_shapes(module), module.state_dict(), "Linear(3, 2)", "weights.pt")
    with pytest.raises(StateDictMismatchError) as caught:
        check_state_dict(state_dict_shapes(module), {}, "Linear(3, 2)", "weights.pt", hint="Re-export it.")
    message = str(caught.value)
    assert message.startswith("weights.pt does not match the expected architecture Linear(3, 2)")
    assert "missing (2):\n    bias\n    weight" in message and message.endswith("\nRe-export it.")
