"""How the project's commands end and show progress, in nerfstudio's look.

- :func:`print_summary`: one panel listing what a command wrote and where, as ``ns-train`` ends
  ("Training Finished") and ``ns-render`` ends ("Render Complete");
- :func:`progress_bar`: a rich progress bar with a count, the elapsed time and an ETA on
  nerfstudio's console (the columns of nerfstudio's own exporters).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

from rich import box, style
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from nerfstudio.utils.rich_utils import CONSOLE

Row = Tuple[str, object]
"""(label, value) of a summary line; the value is shown with ``str`` (paths as paths)."""


def summary_panel(title: str, rows: Sequence[Row]) -> Panel:
    """A minimal two-column table of ``rows`` in a panel titled ``title`` (green, bold)."""
    table = Table(title=None, show_header=False, box=box.MINIMAL, title_style=style.Style(bold=True))
    for label, value in rows:
        table.add_row(escape(label), escape(str(value)))
    return Panel(table, title=f"[bold][green]:tada: {escape(title)} :tada:[/bold]", expand=False)


def print_summary(title: str, rows: Sequence[Row]) -> None:
    """Print what a command wrote and where, once, at its end (nerfstudio's "Training Finished" panel)."""
    CONSOLE.print(summary_panel(title, rows))


def progress_bar(
    description: str, *extra: Union[str, ProgressColumn], disable: bool = False, console: Optional[Console] = None
) -> Progress:
    """``description ━━━━ n/N elapsed ETA`` on nerfstudio's console (or ``console``); ``extra`` columns
    (format strings or columns) go before the times."""
    columns = [TextColumn(description), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(column) if isinstance(column, str) else column for column in extra]
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=console or CONSOLE, disable=disable)
