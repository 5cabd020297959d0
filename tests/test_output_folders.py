"""Writers refuse non-empty output folders without --overwrite, and never leave a stale result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sparsefusion_ns.model.sparsefusion_model import SparseFusionModel
from sparsefusion_ns.scripts.evaluate import EvaluateConfig, evaluate
from sparsefusion_ns.scripts.export_density_mesh import ExportDensityMesh
from sparsefusion_ns.scripts.make_demo_scene import entrypoint as make_demo_scene_cli
from sparsefusion_ns.utils.output_folders import OutputFolderNotEmptyError, prepare_output_folder
from tests.trained_model import session_trained_model


@pytest.fixture(scope="session")
def trained_config(tmp_path_factory) -> Path:
    return session_trained_model(tmp_path_factory)


def test_prepare_output_folder(tmp_path):
    assert prepare_output_folder(tmp_path / "new" / "out", False, "tool --out").is_dir()
    prepare_output_folder(tmp_path / "new" / "out", False, "tool --out")  # empty: fine
    folder = tmp_path / "full"
    (folder / "sub").mkdir(parents=True)
    (folder / "result.json").write_text("old")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(
        OutputFolderNotEmptyError,
        match=r"tool --out .*full is not empty \(it holds notes.txt, result.json, sub/\).*--overwrite",
    ):
        prepare_output_folder(folder, False, "tool --out", own_outputs=("result.json",))
    assert (folder / "result.json").read_text() == "old"
    prepare_output_folder(folder, True, "tool --out", own_outputs=("result.json",))
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "sub"]  # only the tool's own output went
    with pytest.raises(NotADirectoryError, match="notes.txt is a file"):
        prepare_output_folder(folder / "notes.txt", True, "tool --out")


def run_demo_scene_cli(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["sf-make-demo-scene", *args])
    try:
        make_demo_scene_cli()
    except SystemExit as exit_info:
        return int(exit_info.code)
    return 0


def test_sf_make_demo_scene_refuses_an_existing_scene(tmp_path, monkeypatch, capsys):
    scene = tmp_path / "scene"
    assert run_demo_scene_cli(monkeypatch, "--output", str(scene), "--num-views", "6", "--resolution", "16") == 0
    before = {p.relative_to(scene): p.read_bytes() for p in scene.rglob("*") if p.is_file()}
    code = run_demo_scene_cli(monkeypatch, "--output", str(scene), "--num-views", "3", "--resolution", "24")
    assert code == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "is not empty" in out and "--overwrite" in out and str(scene) in out
    assert {p.relative_to(scene): p.read_bytes() for p in scene.rglob("*") if p.is_file()} == before
    # --overwrite replaces the scene: no frame of the old one is left mixed in
    args = ("--output", str(scene), "--num-views", "3", "--resolution", "24", "--overwrite")
    assert run_demo_scene_cli(monkeypatch, *args) == 0
    assert sorted(p.name for p in (scene / "images").iterdir()) == [f"frame_{i:03d}.png" for i in range(3)]
    assert len(json.loads((scene / "transforms.json").read_text())["frames"]) == 3


def test_sf_eval_refuses_a_folder_with_results_and_never_leaves_a_stale_one(trained_config, tmp_path, monkeypatch):
    output = tmp_path / "eval"
    output.mkdir()
    (output / "metrics.json").write_text('{"mean": {"psnr": 99.0}}')  # an earlier evaluation
    with pytest.raises(OutputFolderNotEmptyError, match="sf-eval --output-dir"):
        evaluate(EvaluateConfig(load_config=trained_config, output_dir=output))
    assert (output / "metrics.json").read_text() == '{"mean": {"psnr": 99.0}}'

    def interrupted(self, camera, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(SparseFusionModel, "get_outputs_for_camera", interrupted)
        with pytest.raises(KeyboardInterrupt):
            evaluate(EvaluateConfig(load_config=trained_config, output_dir=output, overwrite=True))
    assert list(output.iterdir()) == []  # the earlier result is gone, nothing half-written is there

    results = evaluate(EvaluateConfig(load_config=trained_config, output_dir=output, overwrite=True))
    assert json.loads((output / "metrics.json").read_text()) == json.loads(json.dumps(results))
    assert sorted(p.name for p in output.iterdir()) == ["contact_sheet.png", "metrics.json"]


def test_sf_export_density_mesh_refuses_a_non_empty_folder(trained_config, tmp_path):
    output = tmp_path / "mesh"
    output.mkdir()
    (output / "pointcloud.ply").write_text("from ns-export")
    common = dict(load_config=trained_config, output_dir=output, resolution=16, threshold=1.0)
    with pytest.raises(OutputFolderNotEmptyError, match="sf-export-density-mesh --output-dir"):
        ExportDensityMesh(**common).main()
    path = ExportDensityMesh(**common, overwrite=True).main()
    assert sorted(p.name for p in output.iterdir()) == ["density_mesh.ply", "pointcloud.ply"]
    assert path.stat().st_size > 0
