"""The registered methods' field sizes, defined once (``field.sizes``-style nesting), are the values they
always had; run config files written before the nesting still load."""

from __future__ import annotations

import dataclasses
from importlib.metadata import entry_points

import pytest
import tyro
import yaml

from sparsefusion_ns.engine.config_files import load_run_config
from sparsefusion_ns.field.hash_grid import HashGridLayout
from sparsefusion_ns.field.sparsefusion_field import SparseFusionField, SparseFusionFieldConfig
from sparsefusion_ns.plugin.method_configs import sparsefusion_tiny_config

PAPER_FIELD = {
    "num_levels": 16, "features_per_level": 2, "log2_hashmap_size": 16, "base_resolution": 16,
    "max_resolution": 8192, "hidden_dim": 64, "num_layers": 3, "blob_amplitude": 5.0, "blob_std": 0.2,
}  # fmt: skip
CPU_FIELD = {**PAPER_FIELD, "num_levels": 8, "log2_hashmap_size": 14, "max_resolution": 512, "hidden_dim": 32}
EXPECTED = {"sparsefusion": PAPER_FIELD, "sparsefusion-mini": CPU_FIELD, "sparsefusion-tiny": CPU_FIELD}
"""The effective field sizes of every registered method, as recorded before the sizes were nested."""


def registered_methods() -> dict:
    return {
        entry.name: entry.load().config
        for entry in entry_points(group="nerfstudio.method_configs")
        if entry.value.startswith("sparsefusion_ns.")
    }


def flat_sizes(field: SparseFusionFieldConfig) -> dict:
    sizes = {key: value for key, value in dataclasses.asdict(field).items() if key not in ("grid", "implementation")}
    return {**dataclasses.asdict(field.grid), **sizes}


def test_every_registered_method_keeps_its_field_sizes():
    methods = registered_methods()
    assert set(methods) == set(EXPECTED)
    for name, config in methods.items():
        field = config.pipeline.model.field
        assert flat_sizes(field) == EXPECTED[name], name
        assert field.implementation == "auto" and config.pipeline.model.sampler == "auto"
        built = SparseFusionField(field)
        assert built.encoding.output_dim == field.grid.num_levels * field.grid.features_per_level
        assert len([m for m in built.mlp if hasattr(m, "weight")]) == field.num_layers


@pytest.mark.parametrize("flag, value, path", [
    ("--pipeline.model.field.grid.num-levels", "4", ("grid", "num_levels")),
    ("--pipeline.model.field.grid.log2-hashmap-size", "12", ("grid", "log2_hashmap_size")),
    ("--pipeline.model.field.hidden-dim", "16", ("hidden_dim",)),
    ("--pipeline.model.field.blob-std", "0.5", ("blob_std",)),
])  # fmt: skip
def test_field_sizes_on_the_command_line(flag, value, path):
    config = sparsefusion_tiny_config()
    parsed = tyro.cli(tyro.conf.FlagConversionOff[type(config)], default=config, args=[flag, value])
    field = parsed.pipeline.model.field
    got = getattr(field.grid, path[1]) if path[0] == "grid" else getattr(field, path[0])
    assert str(got) == value or float(got) == float(value)
    unchanged = flat_sizes(field)
    unchanged.pop(path[-1])
    assert unchanged == {k: v for k, v in CPU_FIELD.items() if k != path[-1]}


def test_config_files_written_before_the_nesting_load_into_field(tmp_path):
    """A run's config.yml of an earlier version lists the sizes beside the other model options."""
    config = sparsefusion_tiny_config()
    config.pipeline.model.field = SparseFusionFieldConfig(
        grid=HashGridLayout(num_levels=6, log2_hashmap_size=12, max_resolution=256), hidden_dim=24, blob_std=0.3
    )
    text = yaml.dump(config)
    flat = [f"    {key}: {value}" for key, value in flat_sizes(config.pipeline.model.field).items()]
    start = text.index("    field: !!python/object:sparsefusion_ns.field.sparsefusion_field.SparseFusionFieldConfig")
    end = text.index("    huber_scale:")  # yaml.dump sorts the keys
    old_text = text[:start] + "\n".join(flat) + "\n" + text[end:]
    assert "SparseFusionFieldConfig" not in old_text and "    num_levels: 6" in old_text
    path = tmp_path / "config.yml"
    path.write_text(old_text)
    for loaded in (load_run_config(path), yaml.load(old_text, Loader=yaml.Loader)):  # ours and nerfstudio's
        model = loaded.pipeline.model
        assert model.field == config.pipeline.model.field
        assert not hasattr(model, "num_levels") and not hasattr(model, "hidden_dim")
    assert load_run_config(path) == config
