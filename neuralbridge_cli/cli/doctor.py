"""`neuralbridge doctor`: print the environment report; exit 1 when a --route is unavailable."""
from __future__ import annotations

from typing import Annotated, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import ExitCode
from .output import print_json, reports_errors, stdout
from .params import DebugOpt, JsonOpt

STATUS_STYLE = {"ok": "[green]ok[/green]", "partial": "[yellow]partial[/yellow]",
                "missing": "[red]missing[/red]"}
CELL = {"ok": "[green]ok[/green]", "partial": "[yellow]ok*[/yellow]", "missing": "[red]no[/red]"}
SEVERITY_STYLE = {"error": "[bold red]error[/bold red]", "warning": "[yellow]warning[/yellow]",
                  "info": "[blue]info[/blue]"}


def _complete_route(incomplete: str) -> list[str]:
    from ..doctor import SOURCE_ALIASES
    from ..pipeline import TARGETS

    routes = [f"{s}:{t}" for s in ("torch", "tf", "keras", "onnx") for t in TARGETS
              if SOURCE_ALIASES[s] != t]
    return [r for r in routes if r.startswith(incomplete)]


@reports_errors
def doctor(
    route: Annotated[Optional[List[str]], typer.Option(
        "--route", "-r", help="Check one route, SOURCE:TARGET (e.g. torch:tf, keras:torch, "
        "onnx:tflite); exit 1 when it is unavailable.", show_default=False,
        autocompletion=_complete_route)] = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show installed frameworks, available conversion routes, known incompatibilities,
    and the pip extra that fixes each gap. Imports no framework.

    Examples:

      neuralbridge doctor

      neuralbridge doctor --route torch:tf || pip install 'neuralbridge-cli[all]'
    """
    from ..doctor import check_route, diagnose, parse_route

    report = diagnose()
    wanted = [parse_route(text) for text in route or []]
    packages = {p.name: p for p in report.packages}
    checked = [check_route(source, target, packages) for source, target in wanted]
    unavailable = [r for r in checked if not r.available]
    if json_output:
        data = report.as_dict()
        if checked:
            data["checked"] = [{**vars(r), "available": r.available} for r in checked]
        data["ok"] = not unavailable
        print_json(data)
    else:
        _render(report, checked)
    if unavailable:
        raise typer.Exit(ExitCode.FAILURE)


def _render(report, checked) -> None:
    stdout.print(f"[bold]neuralbridge {report.neuralbridge}[/bold] on Python "
                 f"{escape(report.python)}, {report.platform}")
    stdout.print(_packages_table(report.packages))
    stdout.print(_routes_table(report.routes))
    gaps: dict[str, list] = {}
    for route in report.routes:
        if route.fix:
            gaps.setdefault(route.fix, []).append(route)
    for fix, routes in gaps.items():
        unavailable = [r for r in routes if r.status == "missing"]
        partial = [r for r in routes if r.status == "partial"]
        parts = ([f"enables {_route_list(unavailable)}"] if unavailable else []) + \
                ([f"adds fallbacks to {_route_list(partial)}"] if partial else [])
        stdout.print(f"[yellow]fix:[/yellow] [bold]{escape(fix)}[/bold] {'; '.join(parts)}")
    if report.issues:
        stdout.print("[bold]Known issues[/bold]")
    for issue in report.issues:
        stdout.print(f"  {SEVERITY_STYLE[issue.severity]} {escape(issue.message)}"
                     + (f"\n      fix: {escape(issue.fix)}" if issue.fix else ""))
    for route in checked:
        line = f"route {route.source}:{route.target}: {STATUS_STYLE[route.status]}"
        if route.missing:
            line += f" (missing {', '.join(route.missing)})"
        if route.fix:
            line += f"; fix: [bold]{escape(route.fix)}[/bold]"
        stdout.print(line)


def _packages_table(packages) -> Table:
    table = Table(title="Packages", title_justify="left")
    for column in ("package", "version", "provided by", "used for"):
        table.add_column(column)
    for pkg in packages:
        version = pkg.version if pkg.present else "[red]not installed[/red]"
        extra = (f"[{pkg.extra}] extra" if pkg.extra else pkg.comes_with
                 or "core dependency")
        table.add_row(pkg.name, version, escape(extra), pkg.role)
    return table


def _routes_table(routes) -> Table:
    targets = list(dict.fromkeys(r.target for r in routes))
    table = Table(title="Routes (source framework -> target)", title_justify="left")
    table.add_column("from \\ to")
    for target in targets:
        table.add_column(target)
    for source in dict.fromkeys(r.source for r in routes):
        cells = {r.target: CELL[r.status] for r in routes if r.source == source}
        table.add_row(source, *(cells[t] for t in targets))
    if any(r.status == "partial" for r in routes):
        table.caption = "ok* works with fewer fallback strategies"
    return table


def _route_list(routes) -> str:
    """`torch -> onnx, tf; onnx -> tf`: routes grouped by source."""
    by_source: dict[str, list[str]] = {}
    for route in routes:
        by_source.setdefault(route.source, []).append(route.target)
    return "; ".join(f"{s} -> {', '.join(t)}" for s, t in by_source.items())
