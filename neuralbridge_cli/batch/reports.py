"""Batch results: per-model records, the JSON report and the JUnit XML report."""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

from ..errors import ExitCode

OK, SKIPPED, FAILED, MISMATCH, TIMEOUT, CRASHED = ("ok", "skipped", "failed", "mismatch",
                                                    "timeout", "crashed")
FAILURES = (FAILED, MISMATCH, TIMEOUT, CRASHED)


@dataclass
class ModelResult:
    """What happened to one model of the batch."""

    model: str  # relative path in the batch folder
    source: str
    output: str | None
    status: str  # ok | skipped | failed | mismatch | timeout | crashed
    format: str | None = None
    target: str | None = None
    route: list[str] = field(default_factory=list)
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    seconds: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status in FAILURES


@dataclass
class BatchReport:
    """The whole batch: settings, per-model results and totals."""

    source: str
    output: str
    target: str | None
    jobs: int
    shard: str | None
    results: list[ModelResult] = field(default_factory=list)
    seconds: float = 0.0
    discovered: int = 0  # models in the folder before sharding

    def counts(self) -> dict[str, int]:
        counts = {status: 0 for status in (OK, SKIPPED, FAILED, MISMATCH, TIMEOUT, CRASHED)}
        for result in self.results:
            counts[result.status] += 1
        return counts

    @property
    def failures(self) -> list[ModelResult]:
        return [r for r in self.results if r.failed]

    @property
    def exit_code(self) -> int:
        """0 all converted; 3 only validation mismatches; 1 any other failure."""
        statuses = {r.status for r in self.failures}
        if not statuses:
            return ExitCode.OK
        return ExitCode.MISMATCH if statuses == {MISMATCH} else ExitCode.FAILURE

    def as_dict(self) -> dict:
        return {
            "ok": not self.failures,
            "source": self.source, "output": self.output, "target": self.target,
            "jobs": self.jobs, "shard": self.shard, "discovered": self.discovered,
            "seconds": round(self.seconds, 3), "counts": self.counts(),
            "models": [_rounded(asdict(r)) for r in self.results],
        }


def _rounded(data: dict) -> dict:
    data["seconds"] = round(data["seconds"], 3)
    return data


def write_json(report: BatchReport, path: str | Path) -> None:
    _write_atomic(Path(path), json.dumps(report.as_dict(), indent=2, default=str) + "\n")


def junit_xml(report: BatchReport) -> str:
    """One <testcase> per model, so CI systems list each conversion as a test."""
    counts = report.counts()
    failures = counts[FAILED] + counts[MISMATCH] + counts[TIMEOUT] + counts[CRASHED]
    suite = ET.Element("testsuite", name=f"neuralbridge convert {report.source}",
                       tests=str(len(report.results)), failures=str(failures), errors="0",
                       skipped=str(counts[SKIPPED]), time=f"{report.seconds:.3f}")
    for result in report.results:
        case = ET.SubElement(suite, "testcase", name=result.model,
                             classname=f"neuralbridge.{result.target or 'convert'}",
                             time=f"{result.seconds:.3f}")
        if result.failed:
            failure = ET.SubElement(case, "failure", message=result.error or result.status,
                                    type=result.status)
            failure.text = result.error or result.status
        elif result.status == SKIPPED:
            ET.SubElement(case, "skipped", message="output up to date (--skip-existing)")
        details = _details(result)
        if details:
            ET.SubElement(case, "system-out").text = details
    root = ET.Element("testsuites", tests=suite.get("tests"), failures=suite.get("failures"),
                      time=suite.get("time"))
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _details(result: ModelResult) -> str:
    lines = []
    if result.output:
        lines.append(f"output: {result.output}")
    if result.route:
        lines.append(f"route: {' -> '.join(result.route)}")
    if result.max_abs_error is not None:
        lines.append(f"max abs error: {result.max_abs_error:.3g}, relative to output scale: "
                     f"{result.max_rel_error:.3g}")
    lines.extend(f"note: {n}" for n in result.notes)
    return "\n".join(lines)


def write_junit(report: BatchReport, path: str | Path) -> None:
    _write_atomic(Path(path), junit_xml(report))


def _write_atomic(path: Path, text: str) -> None:
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".nbtmp-{uuid.uuid4().hex[:8]}-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
