"""Time-to-quality of SparseFusion's distillation schedules: held-out PSNR against UNet evaluations.

    python benchmarks/plot_time_to_quality.py benchmarks/results/critter_v2 benchmarks/results/critter_v2_cached \\
        --output docs/images/time_to_quality.png

Every argument is an output folder of ``benchmarks/mini_category_comparison.py`` run with
``--quality-every N``. Each folder gives one curve (labelled with its schedule, or ``--labels``): the
mean over its finished scenes (or the ``--scenes`` given, so that folders with different scenes are
compared on the same ones) of the held-out PSNR probed every N iterations, against the mean
teacher UNet evaluations spent by then (``summary.sparsefusion.quality_curve`` of its
``results.json``). Thin lines are the single scenes. A second panel draws the same points against
the training's wall seconds (probes excluded).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Optional, Sequence


def read_curves(folder: Path, only: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """The folder's schedule, mean curve and per-scene curves (error naming the folder if it has none).

    With ``only``, the curves of those scenes alone and their mean (every one must have a curve)."""
    path = folder / "results.json"
    if not path.is_file():
        raise SystemExit(f"Error: {path} does not exist: is {folder} an output folder of mini_category_comparison.py?")
    document = json.loads(path.read_text())
    summary = document.get("summary", {}).get("sparsefusion", {})
    mean = summary.get("quality_curve")
    if not mean:
        raise SystemExit(
            f"Error: {path} holds no time-to-quality curve: run mini_category_comparison.py with --quality-every N."
        )
    curves = {
        name: records["sparsefusion"]["quality_curve"]
        for name, records in document.get("scenes", {}).items()
        if records.get("sparsefusion", {}).get("quality_curve")
    }
    if only is not None:
        missing = [name for name in only if name not in curves]
        if missing:
            raise SystemExit(f"Error: {path} has no time-to-quality curve of {', '.join(missing)}.")
        curves = {name: curves[name] for name in only}
        mean = [
            {key: sum(curve[index][key] for curve in curves.values()) / len(curves) for key in MEAN_KEYS}
            for index in range(min(len(curve) for curve in curves.values()))
        ]
    schedule = summary.get("schedule") or document.get("settings", {}).get("schedule", "authors")
    return {"schedule": schedule, "mean": mean, "scenes": list(curves.values())}


MEAN_KEYS = ("step", "psnr", "unet_evals", "train_seconds")
"""What a mean curve point holds when ``--scenes`` picks the scenes."""


def plot(
    folders: Sequence[Path],
    output: Path,
    labels: Optional[Sequence[str]],
    title: Optional[str],
    scenes: Optional[Sequence[str]] = None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if labels is not None and len(labels) != len(folders):
        raise SystemExit(f"Error: {len(labels)} --labels for {len(folders)} folders")
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    for position, folder in enumerate(folders):
        curves = read_curves(folder, scenes)
        label = labels[position] if labels is not None else f"{curves['schedule']} ({folder.name})"
        colour = f"C{position}"
        for axis, x_key in zip(axes[0], ("unet_evals", "train_seconds")):
            for scene in curves["scenes"]:
                points = [p for p in scene if "psnr" in p]
                axis.plot([p[x_key] for p in points], [p["psnr"] for p in points], color=colour, alpha=0.2, lw=0.8)
            mean = [p for p in curves["mean"] if "psnr" in p]
            axis.plot([p[x_key] for p in mean], [p["psnr"] for p in mean], color=colour, marker="o", ms=3, label=label)
    axes[0][0].set_xlabel("teacher UNet evaluations spent (per scene)")
    axes[0][1].set_xlabel("training seconds (probes excluded)")
    for axis in axes[0]:
        axis.set_ylabel("held-out PSNR (masked, dB)")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="output folders of mini_category_comparison.py")
    parser.add_argument("--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--labels", nargs="+", default=None, help="one curve label per folder (default: schedule)")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument(
        "--scenes", nargs="+", default=None, help="draw and average these scenes only (default: every finished one)"
    )
    args = parser.parse_args(argv)
    print(plot(args.folders, args.output, args.labels, args.title, args.scenes))


if __name__ == "__main__":
    main()
