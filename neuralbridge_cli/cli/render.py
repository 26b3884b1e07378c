"""Rich rendering of results (stdout)."""
from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from .output import stdout


def validation_table(report, title: str = "Validation", inputs: str = "seeded inputs",
                     batches: str | None = None) -> Table:
    table = Table(title=f"{title} ({batches or f'batch {report.batch}'}, {inputs})",
                  title_justify="left")
    for name in ("output", "shape"):
        table.add_column(name)
    for name in ("max abs error", "mean abs error", "rel. to scale", "scale", "cosine", "top-1"):
        table.add_column(name, justify="right")
    table.add_column("result")
    for row in report.outputs:
        result = "[green]pass[/green]" if row.passed else "[bold red]FAIL[/bold red]"
        table.add_row(escape(row.name), "x".join(map(str, row.shape)), f"{row.max_abs_error:.3g}",
                      f"{row.mean_abs_error:.3g}", f"{row.max_rel_error:.3g}", f"{row.scale:.3g}",
                      "-" if row.cosine is None else f"{row.cosine:.6f}",
                      "-" if row.top1_agreement is None else f"{row.top1_agreement:.0%}",
                      result + (f" [dim]({escape(row.note)})[/dim]" if row.note else ""))
    tols = {(o.atol, o.rtol) for o in report.outputs if o.atol is not None}
    per_output = " (per output as set)" if len(tols) > 1 else ""
    table.caption = (f"pass when max abs error <= atol {report.atol:g} + rtol {report.rtol:g} "
                     f"x scale{per_output}")
    return table


def specs_table(title: str, specs) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("name")
    table.add_column("shape")
    table.add_column("dtype")
    for spec in specs or []:
        table.add_row(escape(spec.name), escape(spec.shape_text()), spec.dtype)
    return table


def conversion(result) -> None:
    src = result.source
    stdout.print(f"[bold]{src.name}[/bold] ({src.format}, {src.framework}) -> "
                 f"[bold]{result.target_name}[/bold] via {' -> '.join(result.route)}"
                 + (f" [dim](exporter: {result.strategy})[/dim]" if result.strategy else ""))
    for note in result.notes:
        stdout.print(f"[dim]note: {note}[/dim]", highlight=False)
    stdout.print(specs_table("Inputs", src.inputs))
    if result.target.input_perms:
        stdout.print("[yellow]layout: the converted model takes channels-last (NHWC) inputs "
                     "for: " + ", ".join(src.inputs[i].name for i in result.target.input_perms)
                     + "[/yellow]")
        stdout.print(specs_table("Inputs of the converted model", result.converted_inputs()))
    if result.report is not None:
        stdout.print(validation_table(result.report))
    else:
        stdout.print("[yellow]validation skipped (--no-validate)[/yellow]")
    if result.output:
        stdout.print(f"saved {result.saved_format} -> [bold]{result.output}[/bold]")
    if result.onnx_path:
        stdout.print(f"saved onnx -> {result.onnx_path}")
    stdout.print(f"[dim]{result.seconds:.1f} s[/dim]")


def description(info: dict) -> None:
    stdout.print(f"[bold]{info['path']}[/bold]: {info['format_description']} "
                 f"({info['framework']})")
    for key in ("class", "opset", "producer", "parameters", "tensors", "size"):
        if info.get(key) not in (None, ""):
            value = info[key]
            if key == "parameters":
                value = f"{value:,}"
            if key == "size":
                value = _human_size(value)
            stdout.print(f"  {key:<11} {value}")
    from ..specs import TensorSpec

    if "weights" in info:  # a state dict: its tensors instead of inputs/outputs
        stdout.print(specs_table("Weights", [TensorSpec(**_spec_args(s))
                                             for s in info["weights"]]))
    else:
        stdout.print(specs_table("Inputs", [TensorSpec(**_spec_args(s))
                                            for s in info["inputs"]]))
        stdout.print(specs_table("Outputs", [TensorSpec(**_spec_args(s))
                                             for s in info["outputs"]]))
    for note in info.get("notes") or []:
        stdout.print(f"[dim]note: {escape(note)}[/dim]", highlight=False)
    if info.get("ops"):
        table = Table(title="Ops", title_justify="left")
        table.add_column("op")
        table.add_column("count", justify="right")
        for op, count in info["ops"].items():
            table.add_row(op, str(count))
        stdout.print(table)


def _spec_args(spec: dict) -> dict:
    return {"name": spec["name"], "shape": tuple(spec["shape"]), "dtype": spec["dtype"]}


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return str(size)


# ---------------------------------------------------------------- doctor
STATUS_STYLE = {"ok": "[green]ok[/green]", "partial": "[yellow]partial[/yellow]",
                "missing": "[red]missing[/red]"}
CELL = {"ok": "[green]ok[/green]", "partial": "[yellow]ok*[/yellow]", "missing": "[red]no[/red]"}
SEVERITY_STYLE = {"error": "[bold red]error[/bold red]", "warning": "[yellow]warning[/yellow]",
                  "info": "[blue]info[/blue]"}


def doctor_report(report, checked) -> None:
    """`neuralbridge doctor`: packages, the route matrix, fixes and known issues."""
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
