"""``benchmarks/mini_category_geometry.py`` at toy size, on runs laid out as ``mini_category_comparison.py`` writes them.

A one-instance synthetic category (``sf-make-category``: ``instance.json`` holds the true shape),
NeRF trained for 40 iterations (a large learning rate clears the initial fog) and SparseFusion for
3 (a random ``Teacher.tiny``; still fog) through the comparison script's own
``run_config``/``train``, then the geometry script on the folder: the table is written, NeRF's
exports score finite, SparseFusion's fog has no TSDF surface and is counted as failed, not
scored, and a rerun reads everything back. Also: the world frame the exports are written in is the
frame of ``instance.json`` (the runs' input cameras map back onto the annotated ones).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsefusion_ns.cameras.pytorch3d_ndc import NDCCameras
from sparsefusion_ns.data.co3d_annotations import Co3dCategory
from sparsefusion_ns.engine.config_files import load_run_config
from sparsefusion_ns.scripts.export_density_mesh import field_to_world
from sparsefusion_ns.scripts.make_category import MakeCategoryConfig, make_category
from sparsefusion_ns.teacher.bundle import Teacher
from tests.torch_threads import torch_threads

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ITERATIONS = {"nerf": 40, "sparsefusion": 3}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    """A comparison folder with one finished scene (its records reduced to what the geometry script reads)."""
    root = tmp_path_factory.mktemp("geometry")
    make_category(MakeCategoryConfig(output=root / "data", num_train=0, num_dev=0, num_test=1, test_frames=8,
                                     workers=1, progress=False))  # fmt: skip
    teacher = Teacher.tiny(seed=0).save_pretrained(root / "teacher")
    comparison = load_script("mini_category_comparison")
    settings = comparison.Settings(
        data=str(root / "data"), category="critter", subset="fewview_test", teacher=str(teacher), num_input_views=2,
        iterations=ITERATIONS["nerf"], bootstrap_iterations=1, plms_max_steps=2, rays_per_batch=256, render_resolution=32,
        image_size=64, vldm_steps=2, seed=0, use_perceptual_loss=False, lpips_vgg_weights=None, figure_scenes=0,
        figure_views=1,
    )  # fmt: skip
    output = root / "benchmark"
    output.mkdir()
    (output / "benchmark_settings.json").write_text(json.dumps(asdict(settings)))
    (scene,) = Co3dCategory(root / "data", "critter").evaluation_frames("fewview_test", "test")
    with torch_threads(1):
        for method in ("nerf", "sparsefusion"):
            config = comparison.run_config(settings, output, scene, method)
            config.pipeline.model.num_uniform_samples = config.pipeline.model.num_importance_samples = 16
            for group in config.optimizers.values():  # as tests/trained_model.py: the fog clears in tens of steps
                group["optimizer"].lr = 3e-2
            config.max_num_iterations = config.steps_per_save = ITERATIONS[method]
            comparison.train(config, on_step=lambda step: None)
            (output / "scenes" / scene).mkdir(parents=True, exist_ok=True)
            (output / "scenes" / scene / f"{method}.json").write_text(json.dumps({"method": method}))
    return output


def arguments(benchmark: Path, *extra: str) -> list:
    return [
        "--benchmark", str(benchmark), "--num-points", "4000", "--tsdf-resolution", "32",
        "--orbit-num-per-ring", "6", "--orbit-elevations-deg", "0", "40", "--orbit-resolution", "24",
        "--density-resolution", "32", "--density-threshold", "5", "--threads", "1", *extra,
    ]  # fmt: skip


def test_geometry_table_of_a_toy_comparison(benchmark, monkeypatch):
    geometry = load_script("mini_category_geometry")
    with torch_threads(1):
        document = geometry.main(arguments(benchmark))
    (scene,) = document["scenes"]
    records, summary = document["scenes"][scene], document["summary"]
    scored = [("nerf", "tsdf"), ("nerf", "density"), ("sparsefusion", "density")]  # the initial density blob
    for method, kind in scored:
        scores = records[method][kind]["scores"]
        assert math.isfinite(scores["chamfer"]) and 0.0 <= scores["fscore"] <= 1.0
        assert scores["threshold"] == pytest.approx(0.02 * records[method][kind]["object_size"])
        assert summary[method][kind]["num_scenes"] == 1 and summary[method][kind]["chamfer"]["std"] == 0.0
    # The TSDF sees SparseFusion's 3-step field as the initial fog, opaque everywhere: no surface in its
    # volume; the export is counted as failed, not scored.
    assert "No surface" in records["sparsefusion"]["tsdf"]["error"]
    assert (
        summary["sparsefusion"]["tsdf"]["num_failed"] == 1 and summary["sparsefusion"]["tsdf"]["fscore"]["mean"] is None
    )
    table = (benchmark / "geometry" / "geometry.md").read_text()
    assert "| NeRF (no teacher) | TSDF mesh, orbit cameras |" in table and "failed" in table

    # a rerun exports nothing again
    monkeypatch.setattr(geometry, "export_one", lambda *a: pytest.fail("a finished export was redone"))
    with torch_threads(1):
        again = geometry.main(arguments(benchmark))
    assert again["scenes"] == document["scenes"]
    with pytest.raises(SystemExit, match="other settings"):
        geometry.main(arguments(benchmark, "--threshold-fraction", "0.05"))


def test_world_frame_of_the_runs_is_the_frame_of_instance_json(benchmark):
    """The runs' input cameras, mapped back to the world frame as the exports map meshes, are the
    annotated cameras of the sequence, in whose frame instance.json gives the shape."""
    config = load_run_config(next((benchmark / "runs").glob("*/sparsefusion-mini/nerf/config.yml")))
    parser = config.pipeline.datamanager.dataparser
    parsed = parser.setup().get_dataparser_outputs("train")
    centres = field_to_world(parsed.cameras.camera_to_worlds[:, :, 3].double().numpy(), parsed.dataparser_transform,
                             parsed.dataparser_scale)  # fmt: skip
    frames = {f.frame_number: f for f in Co3dCategory(parser.data, parser.category).frames_of(parser.sequence_name)}
    chosen = [frames[number].viewpoint for number in parsed.metadata["co3d_frame_numbers"]]
    annotated = NDCCameras(
        R=torch.tensor(np.stack([v.R for v in chosen])), T=torch.tensor(np.stack([v.T for v in chosen])),
        focal_length=torch.ones(len(chosen), 2), principal_point=torch.zeros(len(chosen), 2),
    ).camera_centers()  # fmt: skip
    np.testing.assert_allclose(centres, annotated.double().numpy(), atol=1e-4)  # float32 poses of ~5 units


def test_novel_camera_pool_script_on_the_toy_scene(benchmark, tmp_path):
    """``benchmarks/novel_camera_pool.py``: the orbits' geometry in the frame of instance.json, and a
    ``frame-orbit`` training that really distils from the stand-in pool (the script refuses otherwise)."""
    pool_script = load_script("novel_camera_pool")
    root = benchmark.parent
    (scene,) = Co3dCategory(root / "data", "critter").evaluation_frames("fewview_test", "test")
    argv = ["--data", str(root / "data"), "--teacher", str(root / "teacher"), "--scenes", scene, "--train", "frame-orbit",
            "--iterations", "2", "--bootstrap-iterations", "0", "--plms-max-steps", "1", "--rays", "64", "--threads", "1",
            "--output", str(tmp_path)]  # fmt: skip
    with torch_threads(1):
        pool_script.main(argv)
    record = json.loads((tmp_path / "pool.json").read_text())
    geometry = record["scenes"][scene]["geometry"]
    # sf-make-category aims every frame within ±0.15 of the object's centre, from 4.5–6 units away at
    # 8–40° elevation: the all-frames look-at point lands well inside the object (≈ 4 across), on a
    # circle of radius ≈ 3.4–6
    assert geometry["look_at_error_frames"] < 1.0
    assert 3.0 < geometry["radius_frames"] < 8.0
    assert 0.0 < geometry["input_angle_degrees"] < 180.0
    scores = record["scenes"][scene]["trained"]["frame-orbit"]
    assert math.isfinite(scores["psnr"]) and len(scores["per_view_psnr"]) > 0
    with pytest.raises(SystemExit, match="other settings .*iterations: 2 → 3"):
        pool_script.main([*argv[:-2], "--iterations", "3", "--output", str(tmp_path)])
    # a record written before a setting existed goes on (it was made with that setting's default)
    del record["settings"]["look_at_axes"]
    (tmp_path / "pool.json").write_text(json.dumps(record))
    with torch_threads(1):
        pool_script.main(argv)  # the frame-orbit score is read back, not trained again
    resumed = json.loads((tmp_path / "pool.json").read_text())
    assert resumed["scenes"][scene]["trained"] == record["scenes"][scene]["trained"]
