"""Run configs are read with a loader that builds configuration objects only: a config.yml cannot run code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from sparsefusion_ns.engine.config_files import UnsafeRunConfigError, load_run_config
from sparsefusion_ns.plugin.method_configs import sparsefusion_config, sparsefusion_tiny_config
from sparsefusion_ns.scripts.export_density_mesh import DensityMeshExportError, ExportDensityMesh


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
    '!!python/object/apply:builtins.exec [\'open("{marker}", "w")\']',
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


def test_sf_export_density_mesh_refuses_a_config_that_runs_code(tmp_path):
    marker = tmp_path / "ran"
    path = malicious_config(tmp_path, PAYLOADS[0].format(marker=marker))
    with pytest.raises(DensityMeshExportError, match="nothing in the file was run"):
        ExportDensityMesh(load_config=path, output_dir=tmp_path / "mesh").main()
    assert not marker.exists()


def test_sf_eval_refuses_a_config_that_runs_code(tmp_path, monkeypatch, capsys):
    from sparsefusion_ns.scripts.evaluate import entrypoint

    marker = tmp_path / "ran"
    path = malicious_config(tmp_path, PAYLOADS[0].format(marker=marker))
    monkeypatch.setattr(sys, "argv", ["sf-eval", "--load-config", str(path), "--output-dir", str(tmp_path / "eval")])
    with pytest.raises(SystemExit) as exit_info:
        entrypoint()
    assert exit_info.value.code == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "Refused to load" in out and "os.system" in out and "ns-export" in out
    assert not marker.exists()
