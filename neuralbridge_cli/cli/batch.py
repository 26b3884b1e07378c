"""`neuralbridge convert DIR`: the folder-batch flags, the live progress and the summary."""

import functools
import time
from typing import Annotated, List, Optional

import typer

from ..errors import UsageError
from .output import SETTINGS, print_json, stderr, stdout


def escape(text: str) -> str:
    """rich's markup escape, imported on use (rich.markup costs ~25 ms at start-up)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)

PANEL = "Folder batch (SOURCE is a folder of models)"

JobsOpt = Annotated[Optional[int], typer.Option(
    "--jobs", "-j", help="Worker processes (default: the number of cores).", show_default=False,
    rich_help_panel=PANEL)]
TimeoutOpt = Annotated[Optional[float], typer.Option(
    "--timeout", help="Seconds one model may take; its worker is then killed and replaced.",
    show_default=False, rich_help_panel=PANEL)]
IncludeOpt = Annotated[Optional[List[str]], typer.Option(
    "--include", help="Only models whose path or name matches this glob (repeatable).",
    show_default=False, rich_help_panel=PANEL)]
ExcludeOpt = Annotated[Optional[List[str]], typer.Option(
    "--exclude", help="Skip models whose path or name matches this glob (repeatable).",
    show_default=False, rich_help_panel=PANEL)]
SkipExistingOpt = Annotated[bool, typer.Option(
    "--skip-existing", help="Resume: skip models whose output exists and was converted from "
    "the same source and settings.", rich_help_panel=PANEL)]
ShardOpt = Annotated[Optional[str], typer.Option(
    "--shard", help="Convert only shard K of N (K/N, e.g. 0/3); stable when files are added.",
    show_default=False, rich_help_panel=PANEL)]
ReportOpt = Annotated[Optional[str], typer.Option(
    "--report", help="Write the batch report as JSON here.", show_default=False,
    rich_help_panel=PANEL)]
JunitOpt = Annotated[Optional[str], typer.Option(
    "--junit", help="Write a JUnit XML report here (one test case per model).",
    show_default=False, rich_help_panel=PANEL)]


def check_single(**batch_flags) -> None:
    """Batch-only flags given with a single model: say so instead of ignoring them."""
    given = [name for name, value in batch_flags.items() if value not in (None, False, [])]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{flags} only apply when SOURCE is a folder of models")


def convert_folder(source: str, to: str | None, output: str | None, option_flags: dict, *,
                   jobs, timeout, include, exclude, skip_existing, shard, report,
                   junit, json_output: bool) -> None:
    """Run the batch, print the summary (or JSON), write the reports, exit non-zero on failure."""
    from ..batch import BatchSpec, run_batch
    from ..batch.reports import write_json, write_junit
    from .params import build_options

    from ..batch.discovery import discover

    report_path, junit_path = report, junit
    if not discover(source, include or [], exclude or []):
        raise UsageError(f"no models found in {source}: none of its files is a model, and a "
                         "folder without saved_model.pb is not a SavedModel",
                         hint="check the path, or --include/--exclude")
    if not output:
        raise UsageError(f"{source} is a folder: pass -o OUTDIR for the converted models")
    if option_flags.get("save_onnx"):
        raise UsageError("--save-onnx names one file; it does not apply to a folder batch")
    force = option_flags.pop("force", False)
    build_options(**option_flags)  # bad flags are a usage error before any work
    spec = BatchSpec(source, output, to=to, jobs=jobs, timeout=timeout, include=include or [],
                     exclude=exclude or [], skip_existing=skip_existing, force=force,
                     shard=shard, quiet_workers=not SETTINGS.verbose)
    options_for = functools.partial(_options_for, option_flags)
    display = LiveDisplay() if stderr.is_terminal and not SETTINGS.quiet else PlainDisplay()
    with display:
        result = run_batch(spec, options_for, display.event)
    if report_path:
        write_json(result, report_path)
    if junit_path:
        write_junit(result, junit_path)
    if json_output:
        print_json(result.as_dict())
    else:
        stdout.print(summary_table(result))
    failed = result.failures
    if failed:
        stderr.print(f"[bold red]error:[/bold red] {len(failed)} of {len(result.results)} models "
                     f"failed ({', '.join(escape(r.model) for r in failed[:5])}"
                     f"{', ...' if len(failed) > 5 else ''})", highlight=False)
        raise typer.Exit(result.exit_code)


def _options_for(flags: dict, settings: dict):
    from .params import build_options

    return build_options(**flags, settings=settings)


def summary_table(report):
    """The table of models (model, route, status, max error, seconds), then each failure's reason."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    counts = {k: v for k, v in report.counts().items() if v}
    table = Table(title=f"{len(report.results)} models -> {report.output} "
                        f"({', '.join(f'{v} {k}' for k, v in counts.items())}; "
                        f"{report.seconds:.1f} s, {report.jobs} jobs"
                        + (f", shard {report.shard}" if report.shard else "") + ")",
                  title_justify="left")
    for column, justify in (("model", "left"), ("route", "left"), ("status", "left"),
                            ("max error", "right"), ("seconds", "right")):
        table.add_column(column, justify=justify)
    for r in report.results:
        error = "" if r.max_rel_error is None else f"{r.max_rel_error:.2g} rel"
        if not error and r.max_abs_error is not None:
            error = f"{r.max_abs_error:.2g}"
        table.add_row(escape(r.model), escape(" -> ".join(r.route)),
                      STYLE.get(r.status, "{}").format(r.status), error, f"{r.seconds:.1f}")
    reasons = [Text.assemble((r.status, "bold red"), f" {r.model}: {r.error or ''}")
               for r in report.results if r.failed]
    return Group(table, *reasons) if reasons else table


STYLE = {"ok": "[green]{}[/green]", "skipped": "[cyan]{}[/cyan]", "failed": "[bold red]{}[/bold red]",
         "mismatch": "[bold red]{}[/bold red]", "timeout": "[bold red]{}[/bold red]",
         "crashed": "[bold red]{}[/bold red]"}


class PlainDisplay:
    """One line per finished model on stderr (logs, CI, pipes)."""

    def __init__(self):
        self.done = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def event(self, kind, slot, model, payload) -> None:
        if SETTINGS.quiet:
            return
        if kind == "plan":
            stderr.print(f"· converting {payload['models']} of {payload['discovered']} models "
                         f"with {payload['jobs']} workers", markup=False, highlight=False)
        if kind == "start" and SETTINGS.verbose:
            stderr.print(f"· worker {slot}: {model}", markup=False, highlight=False)
        if kind != "done":
            return
        self.done += 1
        r = payload
        where = f" -> {r.output}" if r.output and not r.failed else ""
        extra = f": {r.error}" if r.error else (
            f" ({' -> '.join(r.route)}" + (f", max error {r.max_abs_error:.2g}"
                                           if r.max_abs_error is not None else "")
            + f", {r.seconds:.1f} s)")
        stderr.print(f"[{self.done}] {r.status} {model}{where}{extra}", markup=False,
                     highlight=False)


class LiveDisplay:
    """A live rich view on a terminal: bar with done/failed/running and ETA, one row per worker."""

    def __init__(self):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=stderr, auto_refresh=False)
        self.bar = None
        self.workers: dict[int, tuple[str, str, float]] = {}
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self.live = None

    def __enter__(self):
        from rich.live import Live

        self.bar = self.progress.add_task("models", total=None, counts="")
        self.live = Live(self, console=stderr, refresh_per_second=4, transient=True)
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)
        return False

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table

        table = Table(box=None, show_header=False, pad_edge=False)
        now = time.monotonic()
        for slot in sorted(self.workers):
            model, step, since = self.workers[slot]
            table.add_row(f"[dim]worker {slot}[/dim]", escape(model), f"[dim]{escape(step)}[/dim]",
                          f"{now - since:.0f} s")
        return Group(self.progress.get_renderable(), table)

    def event(self, kind, slot, model, payload) -> None:
        if kind == "plan":
            self.progress.update(self.bar, total=payload["models"])
            return
        if kind == "start":
            self.workers[slot] = (model, "starting", time.monotonic())
        elif kind == "progress" and slot in self.workers:
            self.workers[slot] = (model, payload, self.workers[slot][2])
        elif kind == "done":
            self.workers.pop(slot, None)
            key = "failed" if payload.failed else payload.status
            self.counts[key] = self.counts.get(key, 0) + 1
            if payload.failed:
                self.live.console.print(f"[bold red]{payload.status}[/bold red] {escape(model)}: "
                                        f"{escape(payload.error or '')}", highlight=False)
        self.progress.update(self.bar, advance=1 if kind == "done" else 0,
                             counts=f"{self.counts['ok']} ok, {self.counts['skipped']} skipped, "
                                    f"{self.counts['failed']} failed, {len(self.workers)} running")
