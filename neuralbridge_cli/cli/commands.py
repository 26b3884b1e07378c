"""The commands: each parses its options, calls the pipeline, and prints."""

from typing import Annotated, Optional

import typer

from . import batch
from .completion import complete_precisions, complete_quantizations
from .output import Progress, print_json, reports_errors, stdout
from .params import (AtolOpt, ConfigOpt, DebugOpt, DtypeOpt, ForceOpt, Framework, FromOpt,
                     InputShapeOpt, JsonOpt, Layout, ModelArgsOpt, ModelClassOpt, OpsetOpt,
                     RtolOpt, SourceArg, StaticOpt, TargetName, TrustPickleOpt, UnsafeKerasOpt,
                     build_options)


@reports_errors
def convert(
    source: SourceArg,
    to: Annotated[Optional[TargetName], typer.Option(
        "--to", "-t", help="Target format. Default: the other framework (torch<->tf).",
        show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="Output path. Default: named after the source in the "
        "working folder.", show_default=False)] = None,
    input_shape: InputShapeOpt = None,
    dtype: DtypeOpt = None,
    model_class: ModelClassOpt = None,
    model_args: ModelArgsOpt = None,
    source_format: FromOpt = None,
    config: ConfigOpt = None,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    no_validate: Annotated[bool, typer.Option("--no-validate", help="Skip the numeric check.")] = False,
    save_onnx: Annotated[Optional[str], typer.Option(
        "--save-onnx", help="Also keep the intermediate ONNX model here.", show_default=False)] = None,
    layout: Annotated[Optional[Layout], typer.Option(
        "--layout", help="keep: same input arrays as the source; nhwc: channels-last image "
        "inputs for TF targets. [default: keep]", show_default=False)] = None,
    opset: OpsetOpt = None,
    static: StaticOpt = False,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", help="fp16 or int8 for --to onnx/tflite (validated against the fp32 "
        "source with looser default tolerances). [default: fp32]", show_default=False,
        autocompletion=complete_precisions)] = None,
    calibration: Annotated[Optional[str], typer.Option(
        "--calibration", help="Representative inputs (.npz/.npy) for int8 [default: seeded "
        "inputs].", show_default=False)] = None,
    quantization: Annotated[Optional[str], typer.Option(
        "--quantization", help="int8 ONNX: static (calibrated QDQ), dynamic, or auto (static "
        "for convolutional graphs). [default: auto]", show_default=False,
        autocompletion=complete_quantizations)] = None,
    weights_only: Annotated[bool, typer.Option("--weights-only", help="Save only the weights.")] = False,
    trust_pickle: TrustPickleOpt = False,
    unsafe_keras: UnsafeKerasOpt = False,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
    jobs: batch.JobsOpt = None,
    timeout: batch.TimeoutOpt = None,
    include: batch.IncludeOpt = None,
    exclude: batch.ExcludeOpt = None,
    skip_existing: batch.SkipExistingOpt = False,
    shard: batch.ShardOpt = None,
    report: batch.ReportOpt = None,
    junit: batch.JunitOpt = None,
) -> None:
    """Convert a model (or every model in a folder) to another framework and check that the
    numbers match.

    Examples:

    \b
      neuralbridge convert resnet18.pt --model-class torchvision.models:resnet18 --to tf
      neuralbridge convert model.keras --to torch -o model.pt2
      neuralbridge convert model.onnx --to tflite --input-shape 1,3,224,224
      neuralbridge convert models/ --to onnx -o out/ --jobs 2 --junit report.xml
    """
    from ..batch.discovery import is_batch_source
    from ..pipeline import AUTO, convert as run_convert

    flags = dict(
        config=config, input_shape=input_shape, dtype=dtype, model_class=model_class,
        model_args=model_args, source_format=source_format, atol=atol, rtol=rtol,
        validate=False if no_validate else None, save_onnx=save_onnx,
        layout=layout.value if layout else None, opset=opset, static=static,
        weights_only=weights_only, trust_pickle=trust_pickle, unsafe_keras=unsafe_keras,
        force=force, precision=precision, calibration=calibration, quantization=quantization)
    batch_flags = dict(jobs=jobs, timeout=timeout, include=include, exclude=exclude,
                       skip_existing=skip_existing, shard=shard, report=report, junit=junit)
    if is_batch_source(source):
        return batch.convert_folder(source, to.value if to else None, output, flags,
                                    json_output=json_output, **batch_flags)
    batch.check_single(**batch_flags)
    options = build_options(**flags)
    with Progress() as progress:
        options.progress = progress
        try:
            result = run_convert(source, to.value if to else None, output or AUTO, options)
        except Exception as exc:
            report = getattr(exc, "report", None)
            if report is not None and not json_output:  # --json: the error object carries it
                from .render import validation_table

                stdout.print(validation_table(report))
            raise
    if json_output:
        print_json({"ok": True, **result.as_dict()})
    else:
        from .render import conversion

        conversion(result)


@reports_errors
def export_onnx(
    source: SourceArg,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="Output .onnx path. Default: the model's class name (ResNet.onnx) "
        "or the file's stem.", show_default=False)] = None,
    input_shape: InputShapeOpt = None,
    dtype: DtypeOpt = None,
    model_class: ModelClassOpt = None,
    model_args: ModelArgsOpt = None,
    source_format: FromOpt = None,
    config: ConfigOpt = None,
    opset: OpsetOpt = None,
    static: StaticOpt = False,
    no_validate: Annotated[bool, typer.Option("--no-validate", help="Skip the numeric check.")] = False,
    trust_pickle: TrustPickleOpt = False,
    unsafe_keras: UnsafeKerasOpt = False,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Export a PyTorch or TensorFlow/Keras model to ONNX (validated with onnxruntime).

    Example: neuralbridge export-onnx torchvision.models:resnet18   (writes ResNet.onnx)
    """
    convert(source, to=TargetName.onnx, output=output, input_shape=input_shape, dtype=dtype,
            model_class=model_class, model_args=model_args, source_format=source_format,
            config=config, opset=opset, static=static, no_validate=no_validate,
            trust_pickle=trust_pickle, unsafe_keras=unsafe_keras, force=force,
            json_output=json_output, debug=debug, atol=None, rtol=None, save_onnx=None,
            layout=None, weights_only=False, precision=None, calibration=None,
            quantization=None)


@reports_errors
def load(
    source: SourceArg,
    as_framework: Annotated[Framework, typer.Option(
        "--as", help="Framework to load the model into (converting when needed).")],
    save: Annotated[Optional[str], typer.Option(
        "--save", help="Write the loaded model in that framework's native format.",
        show_default=False)] = None,
    input_shape: InputShapeOpt = None,
    dtype: DtypeOpt = None,
    model_class: ModelClassOpt = None,
    model_args: ModelArgsOpt = None,
    source_format: FromOpt = None,
    config: ConfigOpt = None,
    trust_pickle: TrustPickleOpt = False,
    unsafe_keras: UnsafeKerasOpt = False,
    force: ForceOpt = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Load any supported model into torch, tf or onnx, run it once, and describe it.

    Example: neuralbridge load model.keras --as torch --save model.pt2
    """
    from ..loading import load_report

    options = build_options(config=config, input_shape=input_shape, dtype=dtype,
                            model_class=model_class, model_args=model_args,
                            source_format=source_format, trust_pickle=trust_pickle,
                            unsafe_keras=unsafe_keras, force=force)
    with Progress() as progress:
        options.progress = progress
        info = load_report(source, as_framework.value, save, options)
    if json_output:
        print_json({"ok": True, **info})
        return
    from .render import specs_table
    from ..specs import TensorSpec

    stdout.print(f"[bold]{info['name']}[/bold] loaded as {info['framework']}: {info['class']}"
                 + (f" (converted via {' -> '.join(info['route'])})" if info["route"] else ""))
    if info["parameters"] is not None:
        stdout.print(f"  parameters  {info['parameters']:,}")
    for title, key in (("Inputs", "inputs"), ("Outputs", "outputs")):
        stdout.print(specs_table(title, [TensorSpec(s["name"], tuple(s["shape"]), s["dtype"])
                                         for s in info[key]]))
    if info.get("saved"):
        stdout.print(f"saved {info['saved_format']} -> [bold]{info['saved']}[/bold]")


@reports_errors
def inspect(
    source: SourceArg,
    source_format: FromOpt = None,
    model_class: ModelClassOpt = None,
    model_args: ModelArgsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    unsafe_keras: UnsafeKerasOpt = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Describe a model: format, inputs/outputs, parameters, size; opset and ops for ONNX.

    Example: neuralbridge inspect model.onnx --json
    """
    from ..inspection import inspect_model

    options = build_options(model_class=model_class, model_args=model_args,
                            source_format=source_format, trust_pickle=trust_pickle,
                            unsafe_keras=unsafe_keras)
    info = inspect_model(source, options)
    if json_output:
        print_json(info)
    else:
        from .render import description

        description(info)
