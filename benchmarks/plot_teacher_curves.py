"""Loss curves of a ``sf-train-teacher`` run, from its tensorboard events, as one PNG.

    python benchmarks/plot_teacher_curves.py --run runs/mini_joint --output docs/images/mini_joint_curves.png

Every ``loss/*`` scalar of the run gets a panel (raw values and a moving average over ``--window``
logged points), the learning rate is drawn on a second axis. Events of a resumed run (several
event files) are merged; where two files log the same step, the later file wins.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def read_scalars(run: Path) -> Dict[str, List[Tuple[int, float]]]:
    """tag → [(step, value)] sorted by step, over every event file of ``<run>/tensorboard``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run / "tensorboard"
    files = sorted(folder.glob("events.out.tfevents.*"), key=lambda path: path.stat().st_mtime)
    if not files:
        raise SystemExit(f"Error: no tensorboard events in {folder}: is {run} a sf-train-teacher run folder?")
    merged: Dict[str, Dict[int, float]] = {}
    for path in files:
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            merged.setdefault(tag, {}).update({event.step: event.value for event in events.Scalars(tag)})
    return {tag: sorted(values.items()) for tag, values in merged.items()}


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot(scalars: Dict[str, List[Tuple[int, float]]], output: Path, window: int, title: Optional[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = sorted(tag for tag in scalars if tag.startswith("loss/") and tag != "loss/total")
    if not losses:
        raise SystemExit("Error: the run logged no loss/* scalars")
    figure, axes = plt.subplots(1, len(losses), figsize=(4.2 * len(losses), 3.2), squeeze=False)
    learning_rate = scalars.get("train/learning_rate")
    for axis, tag in zip(axes[0], losses):
        steps, values = map(np.asarray, zip(*scalars[tag]))
        axis.plot(steps, values, color="0.75", linewidth=0.8, label="logged")
        smooth = moving_average(values, window)
        axis.plot(steps[len(steps) - len(smooth) :], smooth, color="C0", label=f"mean of {window}")
        axis.set_yscale("log")
        axis.set_xlabel("step")
        axis.set_title(tag.split("/", 1)[1])
        axis.grid(alpha=0.3)
        if learning_rate:
            twin = axis.twinx()
            lr_steps, lr_values = zip(*learning_rate)
            twin.plot(lr_steps, lr_values, color="C3", linewidth=0.8, linestyle="--")
            twin.set_ylabel("learning rate", color="C3")
    axes[0][0].legend(loc="upper right", fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="sf-train-teacher --output folder")
    parser.add_argument("--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--window", type=int, default=10, help="moving-average window in logged points")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    print(plot(read_scalars(args.run), args.output, args.window, args.title))


if __name__ == "__main__":
    main()
