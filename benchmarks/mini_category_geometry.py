"""Geometry of the no-teacher field (NeRF) and of SparseFusion against the true shapes of the test instances.

Not a test. Reads a folder written by ``benchmarks/mini_category_comparison.py`` (its
``benchmark_settings.json``, the finished scenes' ``scenes/<scene>/{nerf,sparsefusion}.json`` and
their runs ``runs/<scene>/sparsefusion-mini/{nerf,sparsefusion}/config.yml``). For every finished
scene and both methods it exports the field in the scene's world frame:

- ``tsdf``: ``sf-export tsdf`` with orbit cameras all around the object (default 4 rings × 24);
- ``density``: ``sf-export-density-mesh``, marching cubes of the density at ``--density-threshold``;
- ``pointcloud`` (on request): ``sf-export pointcloud`` with the same orbit cameras;

and scores each against the instance's true surface (``<data>/<category>/<scene>/instance.json``,
written by ``sf-make-category``) with ``sparsefusion_ns.evaluation.geometry``: accuracy,
completeness, Chamfer distance (their mean) and F-score at τ = ``--threshold-fraction`` × the
diagonal of the true surface's bounding box. The paper reports image metrics only; this table goes
beyond it.

Written to ``--output`` (default ``<benchmark>/geometry``):

- ``geometry.json``: settings, per scene/method/export the scores, and mean ± std over scenes;
- ``geometry.md``: the table (mean ± sample std over scenes) and the per-scene F-scores;
- ``exports/<scene>/<method>/<export>/``: the exported files; ``scores/``: one JSON per export.

Rerunning the same command resumes (finished exports are read back); ``--overwrite`` starts afresh.

    python benchmarks/mini_category_geometry.py --benchmark benchmarks/results/critter_v2
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.evaluation.geometry import (
    DEFAULT_THRESHOLD_FRACTION,
    GeometryInputError,
    load_instance,
    object_size,
    score_prediction,
)
from sparsefusion_ns.scripts.export import ExportCameras, ExportError, ExportPointCloud, ExportTSDFMesh
from sparsefusion_ns.scripts.export_density_mesh import DensityMeshExportError, ExportDensityMesh
from sparsefusion_ns.synthetic.surface import sample_surface
from sparsefusion_ns.utils.atomic_files import write_text_atomically
from sparsefusion_ns.utils.output_folders import prepare_output_folder
from sparsefusion_ns.utils.summary import print_summary, progress_bar

METHODS = ("nerf", "sparsefusion")
LABELS = {"nerf": "NeRF (no teacher)", "sparsefusion": "SparseFusion"}
EXPORTS = ("tsdf", "density", "pointcloud")
EXPORT_LABELS = {
    "tsdf": "TSDF mesh, orbit cameras",
    "density": "density mesh (marching cubes)",
    "pointcloud": "point cloud, orbit cameras",
}
METRICS = ("accuracy", "completeness", "chamfer", "precision", "recall", "fscore")
METHOD_FOLDER = "sparsefusion-mini"
"""The method name under ``runs/<scene>/`` (mini_category_comparison.py trains sparsefusion-mini)."""


@dataclass
class GeometrySettings:
    """What determines the scores; a resumed run must have the same."""

    benchmark: str
    """The comparison folder scored (absolute)."""
    data: str
    """Category root holding the instances' instance.json (absolute)."""
    category: str
    """Category name."""
    exports: List[str]
    """Exports scored, of EXPORTS."""
    threshold_fraction: float
    """τ of the F-score as a fraction of the true surface's bounding-box diagonal."""
    num_points: int
    """Points sampled on each surface."""
    seed: int
    """Seed of the surface samples."""
    tsdf_resolution: int
    """TSDF voxels per side."""
    orbit_num_per_ring: int
    """Orbit cameras per ring (TSDF, point cloud)."""
    orbit_elevations_deg: List[float]
    """One orbit ring per elevation, degrees."""
    orbit_resolution: int
    """Side of the orbit images; 0: the inputs' height."""
    density_resolution: int
    """Marching-cubes grid of the density mesh."""
    density_threshold: float
    """Density σ of the density mesh's surface."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--benchmark", type=Path, required=True, help="output folder of mini_category_comparison.py")
    parser.add_argument("--output", type=Path, default=None, help="output folder (default: <benchmark>/geometry)")
    parser.add_argument("--data", type=Path, default=None, help="category root (default: the benchmark's)")
    parser.add_argument("--exports", nargs="+", choices=EXPORTS, default=["tsdf", "density"], help="what to export")
    parser.add_argument("--threshold-fraction", type=float, default=DEFAULT_THRESHOLD_FRACTION,
                        help=f"F-score threshold τ as a fraction of the object's size (default {DEFAULT_THRESHOLD_FRACTION})")  # fmt: skip
    parser.add_argument("--num-points", type=int, default=100_000, help="points per surface (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the surface samples (default 0)")
    parser.add_argument("--tsdf-resolution", type=int, default=128, help="TSDF voxels per side (default 128)")
    parser.add_argument("--orbit-num-per-ring", type=int, default=24, help="orbit cameras per ring (default 24)")
    parser.add_argument("--orbit-elevations-deg", type=float, nargs="+", default=[-30.0, 0.0, 30.0, 60.0],
                        help="one orbit ring per elevation (default -30 0 30 60)")  # fmt: skip
    parser.add_argument("--orbit-resolution", type=int, default=0, help="orbit image side, 0: the inputs' (default)")
    parser.add_argument("--density-resolution", type=int, default=128, help="marching-cubes grid (default 128)")
    parser.add_argument("--density-threshold", type=float, default=10.0, help="density of the surface (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--overwrite", action="store_true", help="delete this script's earlier outputs first")
    return parser.parse_args(argv)


def finished_scenes(benchmark: Path) -> List[str]:
    """Scenes whose NeRF and SparseFusion trainings finished (their records exist), in name order."""
    scenes = benchmark / "scenes"
    if not scenes.is_dir():
        return []
    return sorted(s.name for s in scenes.iterdir() if all((s / f"{m}.json").is_file() for m in METHODS))


def run_config_path(benchmark: Path, scene: str, method: str) -> Path:
    """The run's ``config.yml``: in the comparison folder whose record it is (``--baselines-from`` copies keep
    the record's origin in ``copied_from``: ``<folder>/scenes/<scene>/<method>.json``)."""
    record = json.loads((benchmark / "scenes" / scene / f"{method}.json").read_text())
    if "copied_from" in record:
        benchmark = Path(record["copied_from"]).parents[2]
    return benchmark / "runs" / scene / METHOD_FOLDER / method / "config.yml"


@contextmanager
def quiet(console: Console) -> Iterator[None]:
    """Silence ``console`` (nerfstudio's, which the exporters print their own progress and panels on)."""
    before = console.quiet
    console.quiet = True
    try:
        yield
    finally:
        console.quiet = before


def export_one(settings: GeometrySettings, kind: str, config: Path, folder: Path) -> Path:
    """Export a run's field as ``kind`` into ``folder`` (world frame); the file written."""
    cameras = ExportCameras(
        num_per_ring=settings.orbit_num_per_ring,
        elevations_deg=tuple(settings.orbit_elevations_deg),
        resolution=settings.orbit_resolution,
    )
    if kind == "tsdf":
        return ExportTSDFMesh(
            config, folder, cameras=cameras, resolution=settings.tsdf_resolution, overwrite=True
        ).main()[0]
    if kind == "pointcloud":
        return ExportPointCloud(config, folder, cameras=cameras, overwrite=True).main()[0]
    return ExportDensityMesh(config, folder, resolution=settings.density_resolution,
                             threshold=settings.density_threshold, overwrite=True).main()  # fmt: skip


def _mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    values = [float(v) for v in values]
    if not values:
        return None, None
    return float(np.mean(values)), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(records: Dict[str, Dict[str, Dict[str, Dict]]], settings: GeometrySettings) -> Dict:
    """method → export → metric → {mean, std, n} over scenes (failed exports counted apart)."""
    summary: Dict = {}
    for method in METHODS:
        for kind in settings.exports:
            entries = [records[scene][method][kind] for scene in records if kind in records[scene].get(method, {})]
            scored = [entry["scores"] for entry in entries if "scores" in entry]
            block = {"num_scenes": len(scored), "num_failed": len(entries) - len(scored)}
            for metric in METRICS:
                mean, std = _mean_std([scores[metric] for scores in scored])
                block[metric] = {"mean": mean, "std": std}
            summary.setdefault(method, {})[kind] = block
    return summary


def _cell(block: Dict, metric: str, digits: int) -> str:
    entry = block[metric]
    return "—" if entry["mean"] is None else f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def markdown(settings: GeometrySettings, records: Dict, summary: Dict, command: str) -> str:
    lines = [
        f"# {settings.category}: geometry of NeRF and SparseFusion against the true shapes",
        "",
        f"{len(records)} test scenes. Command:",
        "",
        f"    {command}",
        "",
        "| method | export | accuracy ↓ | completeness ↓ | Chamfer ↓ | precision ↑ | recall ↑ | F-score ↑ | scenes (failed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        for kind in settings.exports:
            block = summary[method][kind]
            lines.append(
                f"| {LABELS[method]} | {EXPORT_LABELS[kind]} | {_cell(block, 'accuracy', 3)} | "
                f"{_cell(block, 'completeness', 3)} | {_cell(block, 'chamfer', 3)} | {_cell(block, 'precision', 3)} | "
                f"{_cell(block, 'recall', 3)} | {_cell(block, 'fscore', 3)} | {block['num_scenes']} ({block['num_failed']}) |"
            )
    lines += [
        "",
        "Mean ± sample standard deviation over scenes. Distances in the scenes' world units; accuracy: mean distance "
        "from the export to the true surface; completeness: from the true surface to the export; Chamfer: their mean; "
        f"precision, recall and F-score at τ = {settings.threshold_fraction:g} × the diagonal of the true surface's "
        f"bounding box; {settings.num_points:,} points per surface (meshes sampled by area, the truth by random lines "
        "through the product's ray caster). A failed export (no surface) is counted apart, not scored.",
        "",
        f"Exports: TSDF with {len(settings.orbit_elevations_deg)} orbit rings × {settings.orbit_num_per_ring} cameras "
        f"(elevations {settings.orbit_elevations_deg}°), {settings.tsdf_resolution}³ voxels; density mesh at "
        f"σ = {settings.density_threshold:g} on a {settings.density_resolution}³ grid.",
        "",
        "## F-score per scene",
        "",
        "| scene | " + " | ".join(f"{LABELS[m]}, {k}" for m in METHODS for k in settings.exports) + " |",
        "|---|" + "---|" * (len(METHODS) * len(settings.exports)),
    ]
    for scene, methods in records.items():
        cells = []
        for method in METHODS:
            for kind in settings.exports:
                entry = methods.get(method, {}).get(kind, {})
                cells.append(f"{entry['scores']['fscore']:.3f}" if "scores" in entry else "failed" if entry else "—")
        lines.append(f"| {scene} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    benchmark = args.benchmark
    settings_path = benchmark / "benchmark_settings.json"
    if not settings_path.is_file():
        raise SystemExit(f"Error: {settings_path} does not exist: --benchmark takes a folder written by "
                         "benchmarks/mini_category_comparison.py.")  # fmt: skip
    bench_settings = json.loads(settings_path.read_text())
    output = args.output or benchmark / "geometry"
    settings = GeometrySettings(
        benchmark=str(benchmark.resolve()),
        data=str((args.data or Path(bench_settings["data"])).resolve()),
        category=bench_settings["category"],
        exports=list(args.exports),
        threshold_fraction=args.threshold_fraction,
        num_points=args.num_points,
        seed=args.seed,
        tsdf_resolution=args.tsdf_resolution,
        orbit_num_per_ring=args.orbit_num_per_ring,
        orbit_elevations_deg=list(args.orbit_elevations_deg),
        orbit_resolution=args.orbit_resolution,
        density_resolution=args.density_resolution,
        density_threshold=args.density_threshold,
    )
    scenes = finished_scenes(benchmark)
    if not scenes:
        raise SystemExit(f"Error: {benchmark} holds no scene whose NeRF and SparseFusion trainings finished "
                         "(scenes/<scene>/nerf.json and sparsefusion.json).")  # fmt: skip
    own = ("geometry.json", "geometry.md", "geometry_settings.json")
    stored_path = output / "geometry_settings.json"
    if args.overwrite:
        for folder in ("exports", "scores"):
            shutil.rmtree(output / folder, ignore_errors=True)
        prepare_output_folder(output, True, "mini_category_geometry.py --output", own_outputs=own)
    elif stored_path.is_file():
        stored = json.loads(stored_path.read_text())
        if stored != json.loads(json.dumps(asdict(settings))):
            raise SystemExit(f"Error: {output} holds scores made with other settings ({stored_path}); pass the same "
                             "options, another --output, or --overwrite.")  # fmt: skip
    else:
        try:
            prepare_output_folder(output, False, "mini_category_geometry.py --output")
        except OSError as error:
            raise SystemExit(f"Error: {error}") from None
    write_text_atomically(stored_path, json.dumps(asdict(settings), indent=1))

    command = " ".join(
        ["python", "benchmarks/mini_category_geometry.py", *(argv if argv is not None else sys.argv[1:])]
    )
    jobs = [(scene, method, kind) for scene in scenes for method in METHODS for kind in settings.exports]
    records: Dict[str, Dict[str, Dict[str, Dict]]] = {scene: {} for scene in scenes}
    started = time.perf_counter()
    CONSOLE.rule(f"Geometry: {len(scenes)} {escape(settings.category)} scenes, {', '.join(settings.exports)}")
    truth_cache: Dict[str, Tuple[object, np.ndarray]] = {}
    # on a console of its own: nerfstudio's is silenced while an export runs
    progress = progress_bar("[bold]exports and scores", "{task.fields[current]}", console=Console())
    with progress:
        task = progress.add_task("geometry", total=len(jobs), current="")
        for scene, method, kind in jobs:
            progress.update(task, current=f"{scene} {method} {kind}")
            score_file = output / "scores" / scene / f"{method}_{kind}.json"
            if score_file.is_file():
                records[scene].setdefault(method, {})[kind] = json.loads(score_file.read_text())
                progress.advance(task)
                continue
            if scene not in truth_cache:
                shape = load_instance(Path(settings.data) / settings.category / scene / "instance.json")
                truth_cache[scene] = (shape, sample_surface(shape, settings.num_points, settings.seed)[0])
            shape, true_points = truth_cache[scene]
            entry: Dict = {"scene": scene, "method": method, "export": kind, "object_size": object_size(true_points)}
            job_started = time.perf_counter()
            try:
                with quiet(CONSOLE):
                    path = export_one(
                        settings,
                        kind,
                        run_config_path(benchmark, scene, method),
                        output / "exports" / scene / method / kind,
                    )
                scores = score_prediction(path, shape, settings.num_points, settings.threshold_fraction, settings.seed,
                                          true_points=true_points)  # fmt: skip
                entry.update(file=str(path), scores=scores.as_dict())
            except (ExportError, DensityMeshExportError, GeometryInputError) as error:
                entry["error"] = str(error)
            entry["seconds"] = round(time.perf_counter() - job_started, 2)
            write_text_atomically(score_file, json.dumps(entry, indent=1))
            records[scene].setdefault(method, {})[kind] = entry
            progress.advance(task)

    summary = summarize(records, settings)
    document = {"settings": asdict(settings), "command": command, "summary": summary, "scenes": records}
    write_text_atomically(output / "geometry.json", json.dumps(document, indent=1))
    write_text_atomically(output / "geometry.md", markdown(settings, records, summary, command))

    table = Table(title=f"Geometry against the true surface, mean over {len(scenes)} scenes")
    for column in ("method", "export", "accuracy", "completeness", "Chamfer", "F-score", "scenes (failed)"):
        table.add_column(column, justify="left" if column in ("method", "export") else "right")
    for method in METHODS:
        for kind in settings.exports:
            block = summary[method][kind]
            table.add_row(LABELS[method], EXPORT_LABELS[kind], _cell(block, "accuracy", 3), _cell(block, "completeness", 3),
                          _cell(block, "chamfer", 3), _cell(block, "fscore", 3), f"{block['num_scenes']} ({block['num_failed']})")  # fmt: skip
    CONSOLE.print(table)
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    print_summary(
        "Geometry Scored",
        [
            ("geometry.md", output / "geometry.md"),
            ("geometry.json", output / "geometry.json"),
            ("Exports", output / "exports"),
            ("Scenes", len(scenes)),
            ("Time", f"{minutes} min {seconds} s"),
        ],
    )
    return document


if __name__ == "__main__":
    main()
