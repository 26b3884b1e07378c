"""Trust commands: validate two models, compare precisions, diff models, check an input file."""

from enum import Enum
from typing import Annotated, List, Optional

import typer

from ..options import DEFAULT_ATOL, DEFAULT_RTOL
from .output import Progress, print_json, reports_errors, stdout
from .params import (ConfigOpt, DebugOpt, DtypeOpt, FromOpt, InputShapeOpt, JsonOpt,
                     ModelArgsOpt, ModelClassOpt, TrustPickleOpt, UnsafeKerasOpt, build_options)

ModelA = Annotated[str, typer.Argument(help="Reference model (any supported format).",
                                       show_default=False)]
ModelB = Annotated[str, typer.Argument(help="Model to check against it.", show_default=False)]
InputsOpt = Annotated[Optional[str], typer.Option(
    "--inputs", help="Input data: .npz (arrays named like the inputs) or .npy (one input).",
    show_default=False)]
SamplesOpt = Annotated[int, typer.Option("--samples", min=1, help="Seeded input draws per "
                                         "batch size.")]
PlotOpt = Annotated[Optional[str], typer.Option("--plot", help="Write a chart here (PNG/SVG; "
                                                "needs matplotlib).", show_default=False)]
TolListOpt = Annotated[Optional[List[str]], typer.Option(
    "--atol", help=f"Absolute tolerance, for all outputs or per output: 1e-4 or logits:1e-3 "
    f"(repeatable) [default: {DEFAULT_ATOL:g}].", show_default=False)]
RtolListOpt = Annotated[Optional[List[str]], typer.Option(
    "--rtol", help=f"Tolerance relative to the output's scale, e.g. 1e-3 or logits:1e-2 "
    f"[default: {DEFAULT_RTOL:g}].", show_default=False)]


def register(app: typer.Typer) -> None:
    """Add the trust commands to the app."""
    app.command("validate")(validate)
    app.command("check-input")(check_input)
    app.command("diff")(diff)
    app.command("compare-precision")(compare_precision)


@reports_errors
def validate(
    model_a: ModelA,
    model_b: ModelB,
    inputs: InputsOpt = None,
    samples: SamplesOpt = 1,
    atol: TolListOpt = None,
    rtol: RtolListOpt = None,
    plot: PlotOpt = None,
    input_shape: InputShapeOpt = None,
    dtype: DtypeOpt = None,
    model_class: ModelClassOpt = None,
    model_args: ModelArgsOpt = None,
    source_format: FromOpt = None,
    config: ConfigOpt = None,
    trust_pickle: TrustPickleOpt = False,
    unsafe_keras: UnsafeKerasOpt = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run two models on the same inputs and compare every output; exit code 3 on mismatch.

    Reports max and mean absolute error, error relative to the output's scale, cosine
    similarity and, for classifier-like outputs, top-1 agreement. Seeded inputs at batch 2 and
    3 unless --inputs is given. NHWC/NCHW differences between the models are mapped.

    Examples:

      neuralbridge validate resnet18.pt resnet18.savedmodel --model-class torchvision.models:resnet18

      neuralbridge validate model.onnx model.tflite --inputs batch.npz --atol logits:1e-3
    """
    from ..compare import compare_models, plot_errors
    from ..datafiles import read_data
    from ..validate import check, parse_tolerances

    default_atol, atols = parse_tolerances(atol, DEFAULT_ATOL, "--atol")
    default_rtol, rtols = parse_tolerances(rtol, DEFAULT_RTOL, "--rtol")
    options = build_options(config=config, input_shape=input_shape, dtype=dtype,
                            model_class=model_class, model_args=model_args,
                            source_format=source_format, trust_pickle=trust_pickle,
                            unsafe_keras=unsafe_keras, atol=default_atol, rtol=default_rtol)
    data = read_data(inputs) if inputs else None
    with Progress() as progress:
        options.progress = progress
        result = compare_models(model_a, model_b, options, data=data, samples=samples,
                                atols=atols, rtols=rtols)
        if plot:
            plot_errors(result, plot)
    if json_output:
        print_json({"ok": result.report.passed, **result.as_dict(), "plot": plot})
    else:
        from .render import validation_table

        stdout.print(f"[bold]{model_b}[/bold] against [bold]{model_a}[/bold]")
        for note in result.report.notes:
            stdout.print(f"[dim]note: {note}[/dim]", highlight=False)
        batches = "batch " + ", ".join(map(str, result.batches))
        stdout.print(validation_table(result.report, "Validate",
                                      "from " + inputs if inputs else "seeded inputs", batches))
        if plot:
            stdout.print(f"error plot -> {plot}")
    check(result.report, what=f"{model_b} differs from {model_a}")


class Range(str, Enum):
    unit = "0-1"
    byte = "0-255"


@reports_errors
def check_input(
    model: Annotated[str, typer.Argument(help="The model the data is for.", show_default=False)],
    data: Annotated[str, typer.Argument(help="Input data: .npz, .npy, or an image (PNG/JPEG).",
                                        show_default=False)],
    fix: Annotated[bool, typer.Option("--fix", help="Apply the unambiguous fixes, write them "
                                      "with -o, re-check, and run the model on them.")] = False,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="Where --fix writes the corrected .npz [default: fixed.npz].",
        show_default=False)] = None,
    expect_range: Annotated[Range, typer.Option(
        "--expect-range", help="Value range the model expects for image inputs.")] = Range.unit,
    input_shape: InputShapeOpt = None,
    dtype: DtypeOpt = None,
    model_class: ModelClassOpt = None,
    model_args: ModelArgsOpt = None,
    source_format: FromOpt = None,
    trust_pickle: TrustPickleOpt = False,
    unsafe_keras: UnsafeKerasOpt = False,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite the -o file.")] = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check an input file against the model's inputs and explain each mismatch with a fix.

    Exit code 0 when the data fits (or --fix made it fit and the model ran on it), 2 otherwise.

    Examples:

      neuralbridge check-input model.onnx batch.npz

      neuralbridge check-input model.onnx cat.jpg --fix -o fixed.npz
    """
    from ..input_check import check_arrays, check_model_input, run_fixed, write_fixed
    from ..errors import InputSpecError

    options = build_options(input_shape=input_shape, dtype=dtype, model_class=model_class,
                            model_args=model_args, source_format=source_format,
                            trust_pickle=trust_pickle, unsafe_keras=unsafe_keras)
    with Progress() as progress:
        options.progress = progress
        handle, result = check_model_input(model, data, options,
                                           expect_range=expect_range.value)
    info = {"ok": result.ok, "model": model, "data": data,
            "inputs": [s.as_dict() for s in result.specs],
            "findings": [f.as_dict() for f in result.findings]}
    written = None
    if fix and result.findings and result.fully_fixable:
        written = write_fixed(result, output or "fixed.npz", force)
        again = check_arrays(result.specs, result.fixed, static=handle.framework != "torch",
                             expect_range=expect_range.value)
        outputs = run_fixed(handle, again if again.ok else result)
        info.update(fixed=written, recheck_ok=again.ok,
                    recheck=[f.as_dict() for f in again.findings],
                    ran={"outputs": [list(o.shape) for o in outputs]})
    if json_output:
        print_json(info)
    else:
        _print_findings(model, data, result, info)
    if not result.ok and not (written and info["recheck_ok"]):
        unfixable = [f for f in result.findings if not f.fixable]
        what = (f"{len(unfixable)} problem(s) need a manual fix" if unfixable else
                "the data does not fit; --fix -o fixed.npz corrects it")
        raise InputSpecError(f"{data} does not fit {model}: {what}")


def _print_findings(model, data, result, info) -> None:
    from rich.markup import escape
    from rich.table import Table

    if result.ok:
        stdout.print(f"[green]ok[/green]: {escape(data)} fits {escape(model)}")
        return
    table = Table(title=f"{data} against {model}", title_justify="left")
    for column in ("kind", "input", "finding", "fix", "auto"):
        table.add_column(column)
    for f in result.findings:
        table.add_row(f.kind, escape(f.input or "-"), escape(f.message), escape(f.fix),
                      "[green]yes[/green]" if f.fixable else "[red]no[/red]")
    stdout.print(table)
    if info.get("fixed"):
        state = "[green]passes[/green]" if info["recheck_ok"] else "[red]still fails[/red]"
        stdout.print(f"fixed input -> [bold]{escape(info['fixed'])}[/bold]; re-check {state}; "
                     f"the model ran on it: outputs {info['ran']['outputs']}")


@reports_errors
def diff(
    model_a: ModelA,
    model_b: Annotated[str, typer.Argument(help="The model to compare with it.",
                                           show_default=False)],
    html: Annotated[Optional[str], typer.Option(
        "--html", help="Write an HTML report with a per-layer bar chart of weight change.",
        show_default=False)] = None,
    top: Annotated[int, typer.Option("--top", help="Rows in the table of most changed tensors.")] = 20,
    model_class: ModelClassOpt = None,
    model_args: ModelArgsOpt = None,
    source_format: FromOpt = None,
    trust_pickle: TrustPickleOpt = False,
    unsafe_keras: UnsafeKerasOpt = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show what differs between two models: layers added/removed/changed, and per weight
    tensor the relative L2 and max absolute change (same or different frameworks).

    Examples:

      neuralbridge diff base.pt finetuned.pt --model-class torchvision.models:resnet18 --html d.html

      neuralbridge diff model.keras model.pt2
    """
    from ..diff import CHANGED_REL_L2, diff_models, html_report

    options = build_options(model_class=model_class, model_args=model_args,
                            source_format=source_format, trust_pickle=trust_pickle,
                            unsafe_keras=unsafe_keras)
    with Progress() as progress:
        options.progress = progress
        result = diff_models(model_a, model_b, options)
    if html:
        html_report(result, html)
    if json_output:
        print_json({"ok": True, **result.as_dict(), "html": html})
        return
    _print_diff(result, top, CHANGED_REL_L2, html)


def _print_diff(result, top: int, threshold: float, html) -> None:
    from rich.markup import escape
    from rich.table import Table

    info = result.as_dict()
    stdout.print(f"[bold]{escape(result.b)}[/bold] against [bold]{escape(result.a)}[/bold] "
                 f"(aligned by {result.alignment}): {info['matched']} tensor pairs matched "
                 f"({result.a_tensors} tensors in A, {result.b_tensors} in B), "
                 f"{info['changed']} changed in {len(result.changed_layers)} layer(s)"
                 + (f": {escape(', '.join(result.changed_layers))}" if result.changed_layers else ""))
    for note in result.notes:
        stdout.print(f"[dim]note: {escape(note)}[/dim]", highlight=False)
    if result.structure:
        table = Table(title="Structure", title_justify="left")
        for column in ("change", "A", "B", "detail"):
            table.add_column(column)
        for e in result.structure:
            table.add_row(e["change"], escape(str(e["a"] or "-")), escape(str(e["b"] or "-")),
                          escape(e["detail"]))
        stdout.print(table)
    rows = sorted(result.tensors, key=lambda t: -t.rel_l2)[:top]
    table = Table(title=f"Weights (top {len(rows)} by relative L2 change; changed when > "
                  f"{threshold:g})", title_justify="left")
    for column in ("A", "B", "shape", "rel L2", "max abs", ""):
        table.add_column(column, justify="right" if column in ("rel L2", "max abs") else "left")
    for t in rows:
        table.add_row(escape(t.a), escape(t.b), "x".join(map(str, t.shape)), f"{t.rel_l2:.3g}",
                      f"{t.max_abs:.3g}", "[red]changed[/red]" if t.changed else
                      "[green]same[/green]")
    stdout.print(table)
    for side, names in (("A", result.unmatched_a), ("B", result.unmatched_b)):
        if names:
            stdout.print(f"only in {side}: {escape(', '.join(names[:10]))}"
                         + (f" (+{len(names) - 10} more)" if len(names) > 10 else ""))
    if not result.changed and not result.unmatched_a and not result.unmatched_b:
        stdout.print("[green]every weight matched and unchanged[/green]")
    if html:
        stdout.print(f"html report -> {html}")


@reports_errors
def compare_precision(
    source: Annotated[str, typer.Argument(help="Model file, folder or import path.",
                                          show_default=False)],
    precisions: Annotated[str, typer.Option(
        "--precisions", help="Comma-separated precisions to build.")] = "fp32,fp16,int8",
    to: Annotated[str, typer.Option("--to", help="onnx (onnxruntime) or tflite (TFLite "
                                    "interpreter).")] = "onnx",
    inputs: InputsOpt = None,
    calibration: Annotated[Optional[str], typer.Option(
        "--calibration", help="Representative inputs (.npz/.npy) for int8 calibration "
        "[default: seeded inputs].", show_default=False)] = None,
    quantization: Annotated[str, typer.Option(
        "--quantization", help="int8 ONNX: static (calibrated), dynamic, or auto (static for "
        "convolutional graphs).")] = "auto",
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed runs per precision.")] = 20,
    output_dir: Annotated[Optional[str], typer.Option(
        "--output-dir", "-o", help="Keep the variants in this folder.", show_default=False)] = None,
    plot: PlotOpt = None,
    input_shape: InputShapeOpt = None,
    dtype: DtypeOpt = None,
    model_class: ModelClassOpt = None,
    model_args: ModelArgsOpt = None,
    source_format: FromOpt = None,
    config: ConfigOpt = None,
    trust_pickle: TrustPickleOpt = False,
    unsafe_keras: UnsafeKerasOpt = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Build fp32/fp16/int8 variants and compare file size, error against fp32, top-1
    agreement and median latency on this machine.

    Examples:

      neuralbridge compare-precision resnet18.pt --model-class torchvision.models:resnet18

      neuralbridge compare-precision model.keras --to tflite --calibration samples.npz --plot p.png
    """
    from ..datafiles import read_data
    from ..precision import compare_precisions, plot_precisions

    options = build_options(config=config, input_shape=input_shape, dtype=dtype,
                            model_class=model_class, model_args=model_args,
                            source_format=source_format, trust_pickle=trust_pickle,
                            unsafe_keras=unsafe_keras, calibration=calibration,
                            quantization=quantization)
    wanted = [p.strip() for p in precisions.split(",") if p.strip()]
    data = read_data(inputs) if inputs else None
    with Progress() as progress:
        options.progress = progress
        report = compare_precisions(source, options, wanted, target=to, data=data, runs=runs,
                                    out_dir=output_dir)
        if plot:
            plot_precisions(report, plot)
    if json_output:
        print_json({"ok": True, **report.as_dict(), "plot": plot})
        return
    _print_precisions(report, plot, output_dir)


def _print_precisions(report, plot, output_dir) -> None:
    from rich.table import Table

    from .render import _human_size

    table = Table(title=f"{report.source} as {report.target} (batch {report.batch})",
                  title_justify="left")
    for column in ("precision", "size", "max abs error", "mean abs error", "rel. to scale",
                   "top-1", "median latency"):
        table.add_column(column, justify="left" if column == "precision" else "right")
    for v in report.variants:
        table.add_row(v.precision, _human_size(v.size_bytes), f"{v.max_abs_error:.3g}",
                      f"{v.mean_abs_error:.3g}", f"{v.max_rel_error:.3g}",
                      "-" if v.top1_agreement is None else f"{v.top1_agreement:.0%}",
                      f"{v.latency_ms:.2f} ms")
    table.caption = (f"errors against fp32; latency: median of {report.variants[0].latency_runs}"
                     " runs on this machine" if report.variants else None)
    stdout.print(table)
    for note in report.notes:
        stdout.print(f"[dim]note: {note}[/dim]", highlight=False)
    if output_dir:
        stdout.print(f"variants kept in {output_dir}")
    if plot:
        stdout.print(f"chart -> {plot}")
