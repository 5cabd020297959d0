"""Run configs are read with a loader that builds configuration objects only: a config.yml cannot run code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sparsefusion_ns.engine.config_files import UnsafeRunConfigError, load_run_config
from sparsefusion_ns.plugin.method_configs import sparsefusion_config, sparsefusion_tiny_config


def test_configs_written_by_ns_train_load_unchanged(tmp_path):
    from nerfstudio.configs.method_configs import method_configs

    for config in (sparsefusion_config(), sparsefusion_tiny_config(), method_configs["nerfacto"]):
        config.pipeline.datamanager.data = tmp_path / "scene"
        path = tmp_path / "config.yml"
        path.write_text(yaml.dump(config))  # what TrainerConfig.save_config writes
        loaded = load_run_config(path)
        assert loaded == yaml.load(path.read_text(), Loader=yaml.Loader), config.method_name


def malicious_config(folder: Path, payload: str) -> Path:
    """A real run config with ``payload`` as the value of one field."""
    text = yaml.dump(sparsefusion_tiny_config()).replace("experiment_name: null", f"experiment_name: {payload}")
    assert payload in text
    path = folder / "config.yml"
    path.write_text(text)
    return path


PAYLOADS = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/object/apply:nerfstudio.utils.scripts.run_command ['touch {marker}']",
    "!!python/object/apply:builtins.exec ['open(\"{marker}\", \"w\")']",
    "!!python/name:os.system ''",
    "!!python/module:os ''",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_code_in_a_config_is_refused_and_never_runs(payload, tmp_path):
    marker = tmp_path / "ran"
    path = malicious_config(tmp_path, payload.format(marker=marker))
    with pytest.raises(UnsafeRunConfigError, match=r"Refused to load .*config\.yml \(line \d+\)"):
        load_run_config(path)
    assert not marker.exists()
