"""One dispatch rule for both CUDA twins (ray sampler, hash grid), checked on the CPU.

The parity tests of the kernels themselves need CUDA (tests/test_hash_grid.py, tests/test_volume_sampling.py);
these check the choice: `auto` falls back, the kernel's own value fails fast naming the option, `torch` never
loads anything, and a kernel is imported at most once.
"""

from __future__ import annotations

import pytest
import torch
import tyro

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox

from sparsefusion_ns.field import hash_grid
from sparsefusion_ns.field.hash_grid import HashGridEncoding, HashGridLayout, hash_grid_encode_torch
from sparsefusion_ns.field.sparsefusion_field import SparseFusionFieldConfig
from sparsefusion_ns.model import volume_sampling
from sparsefusion_ns.model.sparsefusion_model import SparseFusionModelConfig
from sparsefusion_ns.plugin.method_configs import sparsefusion_tiny_config
from sparsefusion_ns.utils.cuda_kernels import CudaKernelUnavailableError, OptionalCudaKernel

SMALL = HashGridLayout(num_levels=2, log2_hashmap_size=8, max_resolution=32)
KERNELS = {
    "sampler": (volume_sampling.NERFACC, "nerfacc", "--pipeline.model.sampler"),
    "hash grid": (hash_grid.TINYCUDANN, "tcnn", "--pipeline.model.field.implementation"),
}


class CountingLoader:
    def __init__(self, module) -> None:
        self.module, self.calls = module, 0

    def __call__(self):
        self.calls += 1
        return self.module


@pytest.mark.parametrize("part", sorted(KERNELS))
def test_both_twins_are_chosen_by_their_real_option(part):
    kernel, choice, option = KERNELS[part]
    assert (kernel.choice, kernel.option) == (choice, option)


@pytest.mark.parametrize("loads", [True, False], ids=["kernel loads", "kernel missing"])
@pytest.mark.parametrize("on_cuda", [True, False], ids=["cuda", "cpu"])
def test_the_rule(loads, on_cuda):
    loader = CountingLoader(object() if loads else None)
    kernel = OptionalCudaKernel("the kernel", "fast", "--x.kernel", loader)
    assert kernel.use("torch", on_cuda) is False
    assert kernel.use("auto", on_cuda) is (loads and on_cuda)
    if loads and on_cuda:
        assert kernel.use("fast", on_cuda) is True
    else:
        with pytest.raises(CudaKernelUnavailableError, match=r"--x\.kernel fast needs the model on CUDA") as error:
            kernel.use("fast", on_cuda)
        assert "use --x.kernel auto (or torch)" in str(error.value)
        assert ("not on CUDA" if not on_cuda else "the kernel does not load") in str(error.value)
    with pytest.raises(ValueError, match="auto, fast or torch"):
        kernel.use("tcnn", on_cuda)
    # imported at most once, and never for tensors off CUDA
    for _ in range(3):
        kernel.use("auto", on_cuda)
    assert loader.calls == (1 if on_cuda else 0)


def test_the_hash_grid_follows_the_rule_on_cpu(monkeypatch):
    loader = CountingLoader(object())  # even where tinycudann would import, CPU inputs never use it
    monkeypatch.setattr(hash_grid, "TINYCUDANN", OptionalCudaKernel("tiny-cuda-nn", "tcnn", "--flag", loader))
    positions = torch.rand(16, 3)
    encoding = HashGridEncoding(SMALL)
    assert encoding.implementation == "auto" and not encoding.uses_tcnn(positions)
    torch.testing.assert_close(encoding(positions), hash_grid_encode_torch(positions, encoding.table, SMALL))
    encoding.implementation = "tcnn"
    with pytest.raises(CudaKernelUnavailableError, match="--flag tcnn needs the model on CUDA"):
        encoding(positions)
    assert loader.calls == 0


@pytest.mark.parametrize(
    "option, value, match",
    [
        ("sampler", "nerfacc", "--pipeline.model.sampler nerfacc needs the model on CUDA"),
        ("implementation", "tcnn", "--pipeline.model.field.implementation tcnn needs the model on CUDA"),
    ],
)
def test_a_model_on_cpu_names_the_flag_that_asks_for_cuda(option, value, match):
    field = SparseFusionFieldConfig(grid=SMALL, hidden_dim=8)
    config = SparseFusionModelConfig(field=field)
    if option == "sampler":
        config.sampler = value
    else:
        field.implementation = value
    model = config.setup(scene_box=SceneBox(aabb=torch.tensor([[-4.0] * 3, [4.0] * 3])), num_train_data=2)
    rays = RayBundle(
        origins=torch.zeros(4, 3), directions=torch.tensor([[0.0, 0.0, 1.0]]).repeat(4, 1),
        pixel_area=torch.ones(4, 1), nears=torch.ones(4, 1), fars=3 * torch.ones(4, 1),
    )  # fmt: skip
    with pytest.raises(CudaKernelUnavailableError, match=match):
        model(rays)


@pytest.mark.parametrize("value", ["auto", "tcnn", "torch"])
def test_the_hash_grid_kernel_is_a_command_line_option(value):
    config = sparsefusion_tiny_config()
    parsed = tyro.cli(
        tyro.conf.FlagConversionOff[type(config)],
        default=config,
        args=["--pipeline.model.field.implementation", value, "--pipeline.model.sampler", "torch"],
    )
    assert parsed.pipeline.model.field.implementation == value and parsed.pipeline.model.sampler == "torch"
    assert config.pipeline.model.field.implementation == "auto"  # the default of every method
