"""`neuralbridge doctor`: print the environment report; exit 1 when a --route is unavailable."""

from typing import Annotated, List, Optional

import typer

from ..errors import ExitCode
from .output import print_json, reports_errors
from .params import DebugOpt, JsonOpt


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
        from .render import doctor_report

        doctor_report(report, checked)
    if unavailable:
        raise typer.Exit(ExitCode.FAILURE)
