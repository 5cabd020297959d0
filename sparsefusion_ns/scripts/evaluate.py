"""``sf-eval``: the paper's evaluation of a trained model on its held-out views.

Renders every held-out view (the frames that are not input views) of a trained ``sparsefusion``
run and computes PSNR and SSIM (scikit-image definitions, data range 1) and LPIPS-VGG (local
weights; skipped with a notice if absent). By default both the render and the ground truth are
multiplied by the foreground mask and the valid region (the paper's protocol); ``--unmasked``
compares the images as they are. Writes per-view and mean values as JSON and a contact sheet
(render | ground truth | |error|, one row per view) for people to look at.

    sf-eval --load-config outputs/scene/sparsefusion/<run>/config.yml --output-dir eval/

Rendering is deterministic (no stratified jitter outside training), so two runs on the same
checkpoint give identical numbers. ``ns-eval`` works on the same checkpoints too (it averages the
same per-view metrics through the model's ``get_image_metrics_and_images``).

The run's ``config.yml`` is read with a restricted loader (it cannot run code) and the newest
complete checkpoint is used (:mod:`sparsefusion_ns.engine.eval_setup`). A non-empty output folder is
refused without ``--overwrite``; with it, the earlier ``metrics.json`` and contact sheet are deleted
before anything is rendered, and the new ones are written atomically, so an interrupted run never
leaves a result that looks current.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import tyro
from rich.markup import escape

from nerfstudio.utils.rich_utils import CONSOLE

from sparsefusion_ns.engine.checkpoints import CheckpointError
from sparsefusion_ns.engine.config_files import RunConfigError
from sparsefusion_ns.engine.eval_setup import eval_setup
from sparsefusion_ns.evaluation.comparison_figure import image_row, stack_rows
from sparsefusion_ns.evaluation.held_out import evaluate_views, field_renderer, held_out_views
from sparsefusion_ns.metrics import LPIPSConfig, lpips_or_warn
from sparsefusion_ns.utils.atomic_files import atomic_path, write_text_atomically
from sparsefusion_ns.utils.output_folders import prepare_output_folder
from sparsefusion_ns.utils.summary import print_summary, progress_bar

OUTPUT_FILES = ("metrics.json", "contact_sheet.png")
"""What sf-eval writes into its output folder."""


@dataclass
class EvaluateConfig:
    """Options of ``sf-eval``."""

    load_config: Path
    """The run's ``config.yml`` (written by ns-train)."""
    output_dir: Path = Path("eval")
    """Folder for ``metrics.json`` and ``contact_sheet.png``."""
    unmasked: bool = False
    """Compare unmasked images instead of the paper's masked protocol."""
    lpips_vgg_weights: Optional[Path] = None
    """Local VGG-16 trunk for LPIPS (torchvision's vgg16-397923af.pth); default: the run's setting."""
    lpips_lin_weights: Optional[Path] = None
    """Local LPIPS linear heads (the lpips package's weights/v0.1/vgg.pth); default: found automatically."""
    contact_sheet_width: int = 128
    """Width in pixels of each image in the contact sheet."""
    overwrite: bool = False
    """Write into a non-empty output folder (its earlier metrics.json and contact sheet are deleted first)."""


def evaluate(config: EvaluateConfig) -> Dict:
    """Evaluate the held-out views; returns the JSON-ready results (also written to disk)."""
    prepare_output_folder(config.output_dir, config.overwrite, "sf-eval --output-dir", own_outputs=OUTPUT_FILES)
    _, pipeline, checkpoint, step = eval_setup(config.load_config, test_mode="test")
    model = pipeline.model
    model.eval()
    model_config = model.config
    lpips = lpips_or_warn(
        LPIPSConfig(
            vgg_weights=config.lpips_vgg_weights or getattr(model_config, "lpips_vgg_weights", None),
            lin_weights=config.lpips_lin_weights or getattr(model_config, "lpips_lin_weights", None),
        ),
        device=model.device,
    )
    views = held_out_views(pipeline.datamanager.eval_dataset)
    with progress_bar("[bold]Evaluating held-out views") as progress:
        task = progress.add_task("views", total=len(views))
        evaluation = evaluate_views(
            field_renderer(model),
            views,
            lpips,
            masked=not config.unmasked,
            on_view=lambda done: progress.update(task, completed=done),
        )

    rows = []
    for view, rendered in zip(views, evaluation.renders):
        gt = view.image
        if not config.unmasked:
            rendered, gt = view.masked(rendered), view.masked(gt)
        rows.append(image_row([rendered, gt, (rendered - gt).abs()], config.contact_sheet_width))
    results = {
        "checkpoint": str(checkpoint),
        "step": step,
        "protocol": "unmasked" if config.unmasked else "masked (foreground mask × valid region)",
        "num_views": len(views),
        "lpips": "computed" if lpips is not None else "skipped: LPIPS-VGG weights not found locally",
        "mean": dict(sorted(evaluation.mean.items())),
        "per_view": evaluation.per_view,
    }
    with atomic_path(config.output_dir / "contact_sheet.png") as temporary:
        stack_rows(rows).save(temporary, format="PNG")
    # metrics.json last: once it exists, the evaluation is complete
    write_text_atomically(config.output_dir / "metrics.json", json.dumps(results, indent=2))
    means = ", ".join(f"{name} {value:.4f}" for name, value in results["mean"].items())
    print_summary(
        "Evaluation Complete",
        [
            ("metrics.json", config.output_dir / "metrics.json"),
            ("contact_sheet.png", config.output_dir / "contact_sheet.png"),
            ("Views", f"{len(views)} held out, {results['protocol']}"),
            ("Means", means),
            ("Checkpoint", f"{checkpoint} (step {step})"),
        ],
    )
    return results


def entrypoint() -> None:
    config = tyro.cli(EvaluateConfig)
    try:
        evaluate(config)
    except (RunConfigError, CheckpointError, OSError) as error:  # OSError: output folder refused, disk full
        CONSOLE.print(f"[bold red]Error:[/bold red] {escape(str(error))}", soft_wrap=True, highlight=False)
        raise SystemExit(1) from None


if __name__ == "__main__":
    entrypoint()
