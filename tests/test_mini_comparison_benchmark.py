"""``benchmarks/mini_category_comparison.py`` end to end at toy sizes: outputs, resuming, refusals.

A CO3D-format fixture category (one 8-frame test sequence), a random ``Teacher.tiny`` (64² images),
3 training iterations, 2 PLMS steps for the VLDM baseline; one torch thread.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from sparsefusion_ns.teacher.bundle import Teacher
from tests.co3d_fixture import Co3dFixtureConfig, write_co3d_fixture
from tests.torch_threads import torch_threads

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mini_category_comparison.py"


def load_script():
    spec = importlib.util.spec_from_file_location("mini_category_comparison", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("co3d")
    fixture = write_co3d_fixture(root, Co3dFixtureConfig(frames_per_sequence=8))
    teacher = Teacher.tiny(seed=0).save_pretrained(tmp_path_factory.mktemp("teacher") / "tiny")
    return fixture, teacher


def arguments(fixture, teacher, output, *extra):
    return [
        "--data", str(fixture.root), "--category", fixture.category, "--teacher", str(teacher),
        "--output", str(output), "--num-scenes", "1", "--iterations", "3", "--bootstrap-iterations", "1",
        "--plms-max-steps", "2", "--vldm-steps", "2", "--figure-views", "1", "--threads", "1", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_benchmark_writes_results_and_resumes_without_redoing_work(inputs, tmp_path, monkeypatch):
    fixture, teacher = inputs
    bench = load_script()
    output = tmp_path / "out"
    with torch_threads(1):
        bench.main(arguments(fixture, teacher, output))
    (scene,) = fixture.sequences["test"]
    results = json.loads((output / "results.json").read_text())
    assert results["scenes_finished"] == [scene]
    records = results["scenes"][scene]
    assert set(records) == {"nerf", "eft", "vldm", "sparsefusion"}
    for record in records.values():
        assert record["num_views"] == 6 and {"psnr", "ssim"} <= set(record["mean"])
    sparsefusion = records["sparsefusion"]
    assert sparsefusion["teacher"]["unet_evals"] > 0 and sparsefusion["perceptual_loss"] is False
    assert set(sparsefusion["seconds_per_iteration"]) == {"all", "bootstrap", "diffusion"}
    assert records["vldm"]["teacher"]["unet_evals"] == 6 * 3  # 2 PLMS steps: 3 evaluations a view
    assert records["nerf"]["teacher"]["unet_evals"] == 0
    assert Path(sparsefusion["run"]).is_file()  # an ordinary nerfstudio run folder
    assert sparsefusion["schedule"] == "authors" and "quality_curve" not in sparsefusion
    table = (output / "results.md").read_text()
    assert "| SparseFusion |" in table and "perceptual (LPIPS-VGG) loss **off**" in table
    assert (output / "comparison.png").is_file()

    # resuming: a finished scene is read back, nothing is trained again
    monkeypatch.setattr(bench, "train", lambda *a, **k: pytest.fail("a finished scene was trained again"))
    with torch_threads(1):
        bench.main(arguments(fixture, teacher, output))
    assert json.loads((output / "results.json").read_text())["scenes"] == results["scenes"]

    # a settings file written before the schedule, quality and pool settings existed holds the values
    # those runs used (the comparisons started with earlier code continue with the new one) ...
    settings_path = output / "benchmark_settings.json"
    stored = json.loads(settings_path.read_text())
    assert stored["schedule"] == "authors" and stored["quality_every"] == 0
    assert stored["look_at_axes"] == "optical"  # the pool's default
    newer = ("schedule", "quality_every", "quality_views", "look_at_axes")
    older = {key: value for key, value in stored.items() if key not in newer}
    settings_path.write_text(json.dumps(older, indent=2))
    with torch_threads(1):
        bench.main(arguments(fixture, teacher, output, "--look-at-axes", "mean_principal_point"))
    assert json.loads((output / "results.json").read_text())["scenes"] == results["scenes"]
    # … so the pool's aim of that time must be asked for: today's default is refused, named
    with pytest.raises(SystemExit, match="look_at_axes: 'mean_principal_point' → 'optical'"):
        bench.main(arguments(fixture, teacher, output))
    # … but another schedule in the same folder is refused
    with pytest.raises(SystemExit, match="schedule: 'authors' → 'cached'"):
        bench.main(arguments(fixture, teacher, output, "--schedule", "cached"))

    # other settings in the same folder are refused, naming the difference
    with pytest.raises(SystemExit, match="iterations: 3 → 4"):
        bench.main(arguments(fixture, teacher, output, "--iterations", "4"))
    # a folder holding anything else is refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        bench.main(arguments(fixture, teacher, tmp_path / "other"))


@pytest.mark.slow
def test_cached_schedule_with_a_time_to_quality_curve(inputs, tmp_path):
    fixture, teacher = inputs
    bench = load_script()
    output = tmp_path / "cached"
    # 4 iterations, bootstrap steps 0-1, diffusion steps 2-3; probes after iterations 2 and 4
    extra = ("--iterations", "4", "--schedule", "cached", "--quality-every", "2", "--quality-views", "2")
    with torch_threads(1):
        bench.main(arguments(fixture, teacher, output, *extra))
    results = json.loads((output / "results.json").read_text())
    assert results["settings"]["schedule"] == "cached"
    (scene,) = fixture.sequences["test"]
    sparsefusion = results["scenes"][scene]["sparsefusion"]
    assert sparsefusion["schedule"] == "cached"
    curve = sparsefusion["quality_curve"]
    assert [point["step"] for point in curve] == [1, 3]
    # the cached schedule regenerates every pool camera's target at step 2 (one regeneration in
    # 2 diffusion iterations, refresh_every 200), 4 DDIM steps each; the bootstrap spends none
    pool_size = results["scenes"][scene]["sparsefusion"]["teacher"]["eft_queries"]
    assert curve[0]["unet_evals"] == 0 and curve[1]["unet_evals"] == pool_size * 4
    assert sparsefusion["teacher"]["unet_evals"] == pool_size * 4
    assert all(point["psnr"] > 0 and 0 <= point["ssim"] <= 1 for point in curve)
    assert curve[0]["train_seconds"] <= curve[1]["train_seconds"]
    summary_curve = results["summary"]["sparsefusion"]["quality_curve"]
    assert [point["step"] for point in summary_curve] == [1, 3] and summary_curve[1]["psnr"] == curve[1]["psnr"]
    assert "UNet evaluations |" in (output / "results.md").read_text()

    # another schedule's folder reuses these baselines (--baselines-from): only SparseFusion trains
    trained = []
    original_train = bench.train

    def counting_train(config, *args, **kwargs):
        trained.append(config.timestamp)
        return original_train(config, *args, **kwargs)

    reusing = tmp_path / "reusing"
    with torch_threads(1), pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench, "train", counting_train)
        bench.main(
            arguments(
                fixture, teacher, reusing, "--iterations", "4", "--baselines-from", str(output),
                "--look-at-axes", "optical",
            )
        )  # fmt: skip
    assert trained == ["sparsefusion"]
    reused = json.loads((reusing / "results.json").read_text())["scenes"][scene]
    for method in ("nerf", "eft", "vldm"):
        assert reused[method]["mean"] == results["scenes"][scene][method]["mean"]
        assert reused[method]["copied_from"] == str((output / "scenes" / scene / f"{method}.json").resolve())
    assert reused["sparsefusion"]["schedule"] == "authors" and "copied_from" not in reused["sparsefusion"]
    assert "copied from" in (reusing / "results.md").read_text()
    # the pool option reaches SparseFusion's run (a distillation setting: the baselines still apply)
    assert "nearest the inputs' optical axes" in (reusing / "results.md").read_text()
    assert "look_at_axes: optical" in Path(reused["sparsefusion"]["run"]).read_text()  # its config.yml
    # baselines made with other settings are refused, naming them
    with pytest.raises(SystemExit, match="iterations: 4 → 3"):
        bench.main(arguments(fixture, teacher, tmp_path / "refused", "--baselines-from", str(output)))

    plot_script = SCRIPT.with_name("plot_time_to_quality.py")
    spec = importlib.util.spec_from_file_location("plot_time_to_quality", plot_script)
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    picture = tmp_path / "ttq.png"
    plot.main([str(output), str(output), "--labels", "cached", "again", "--output", str(picture)])
    assert picture.is_file() and picture.stat().st_size > 0
    with pytest.raises(SystemExit, match="no time-to-quality curve|does not exist"):
        plot.main([str(tmp_path / "nothing"), "--output", str(tmp_path / "x.png")])
    # --scenes: the mean over the scenes named (here the only one: its own curve)
    only = plot.read_curves(output, [scene])
    assert [point["psnr"] for point in only["mean"]] == [point["psnr"] for point in curve]
    with pytest.raises(SystemExit, match="no time-to-quality curve of no_such_scene"):
        plot.main([str(output), "--scenes", "no_such_scene", "--output", str(tmp_path / "x.png")])


@pytest.mark.slow
def test_workers_split_the_scenes_and_match_one_process(tmp_path_factory, inputs, tmp_path):
    _, teacher = inputs
    root = tmp_path_factory.mktemp("co3d_two")
    fixture = write_co3d_fixture(root, Co3dFixtureConfig(frames_per_sequence=8, num_test_sequences=2))
    first, second = fixture.sequences["test"]
    bench = load_script()
    output = tmp_path / "workers"
    with torch_threads(1):
        bench.main([*arguments(fixture, teacher, output), "--num-scenes", "2", "--workers", "2"])
    results = json.loads((output / "results.json").read_text())
    assert results["scenes_finished"] == [first, second] and results["machine"]["workers"] == 2
    assert sorted(path.name for path in (output / "workers").iterdir()) == ["worker_0.log", "worker_1.log"]
    assert first in (output / "workers" / "worker_0.log").read_text()
    assert second in (output / "workers" / "worker_1.log").read_text()
    assert "in each of 2 processes" in (output / "results.md").read_text()
    assert (output / "comparison.png").is_file()

    # the second scene made in this process gives the same records as the worker's
    alone = tmp_path / "alone"
    one_scene = arguments(fixture, teacher, alone)
    position = one_scene.index("--num-scenes")
    del one_scene[position : position + 2]
    with torch_threads(1):
        bench.main([*one_scene, "--scenes", second])
    ours = json.loads((alone / "results.json").read_text())["scenes"][second]
    theirs = results["scenes"][second]
    for method in ("nerf", "eft", "vldm", "sparsefusion"):
        # same seed, one torch thread each: the same arithmetic, so the same numbers
        assert ours[method]["mean"] == theirs[method]["mean"], method

    # a worker that fails stops the command, naming its scenes and showing its log's end
    failing = arguments(fixture, teacher, tmp_path / "failing")
    failing[failing.index("--teacher") + 1] = str(tmp_path / "no_teacher")
    options = bench.parse_args([*failing, "--workers", "2"])
    with pytest.raises(SystemExit, match=f"(?s)the process of {first} exited with 1;.*no_teacher.*Rerun the same"):
        bench.run_workers(options, failing, tmp_path / "failing", [first, second])
