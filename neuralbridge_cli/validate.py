"""Numeric comparison of two models' outputs: one engine for every check.

An output passes when  max|a - b| <= atol + rtol * scale,  where scale = max|reference|.
The error relative to scale is reported too, because random-init models can have
outputs near zero, where any absolute check passes (the report flags that case).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import ValidationMismatch


@dataclass
class OutputComparison:
    """The comparison of one output."""

    name: str
    shape: tuple
    max_abs_error: float
    max_rel_error: float  # max_abs_error / scale
    scale: float  # max |reference|
    passed: bool
    note: str = ""


@dataclass
class ValidationReport:
    """Per-output comparisons plus the settings they were judged with."""

    outputs: list[OutputComparison]
    atol: float
    rtol: float
    batch: int
    reference: str = ""
    candidate: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def max_abs_error(self) -> float:
        return max((o.max_abs_error for o in self.outputs), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((o.max_rel_error for o in self.outputs), default=0.0)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["passed"] = self.passed
        data["max_abs_error"] = self.max_abs_error
        data["max_rel_error"] = self.max_rel_error
        return data

    def summary(self) -> str:
        state = "passed" if self.passed else "FAILED"
        return (f"validation {state}: max abs error {self.max_abs_error:.3g}, "
                f"max error relative to output scale {self.max_rel_error:.3g} "
                f"(atol {self.atol:g}, rtol {self.rtol:g})")


def compare_outputs(reference: list, candidate: list, names: list[str] | None = None, *,
                    atol: float, rtol: float, batch: int = 2) -> ValidationReport:
    """Compare two lists of arrays output by output."""
    import numpy as np

    names = list(names or [])
    notes = []
    if len(reference) != len(candidate):
        notes.append(f"output count differs: {len(reference)} vs {len(candidate)}")
    rows = []
    for i, (ref, cand) in enumerate(zip(reference, candidate)):
        name = names[i] if i < len(names) and names[i] else f"output_{i}"
        rows.append(_compare_one(name, np.asarray(ref), np.asarray(cand), atol, rtol))
    if len(reference) != len(candidate):
        rows.append(OutputComparison("(output count)", (), float("inf"), float("inf"), 0.0, False,
                                     f"{len(reference)} vs {len(candidate)} outputs"))
    return ValidationReport(rows, atol, rtol, batch, notes=notes)


def _compare_one(name, ref, cand, atol, rtol) -> OutputComparison:
    import numpy as np

    if ref.shape != cand.shape:
        if ref.size == cand.size:
            cand = cand.reshape(ref.shape)
        else:
            return OutputComparison(name, tuple(ref.shape), float("inf"), float("inf"), 0.0, False,
                                    f"shape {tuple(cand.shape)} != {tuple(ref.shape)}")
    if ref.dtype.kind in "iub" or cand.dtype.kind in "iub":
        differ = float(np.count_nonzero(ref != cand))
        return OutputComparison(name, tuple(ref.shape), differ, differ / max(ref.size, 1),
                                1.0, differ == 0, "integer output, compared exactly")
    ref64 = ref.astype(np.float64)
    diff = np.abs(ref64 - cand.astype(np.float64))
    if not np.all(np.isfinite(cand)) and np.all(np.isfinite(ref)):
        return OutputComparison(name, tuple(ref.shape), float("inf"), float("inf"), 0.0, False,
                                "the converted model gives NaN/inf")
    max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    scale = float(np.max(np.abs(ref64))) if ref.size else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = max_abs <= atol + rtol * scale
    note = ""
    if scale < atol:
        note = f"outputs are near zero (scale {scale:.2g}); this check is weak"
    return OutputComparison(name, tuple(ref.shape), max_abs, rel, scale, passed, note)


def check(report: ValidationReport, output_path: str | None = None) -> None:
    """Raise ValidationMismatch (exit code 3) when the report failed."""
    if not report.passed:
        failing = [o.name for o in report.outputs if not o.passed]
        where = f"; the output was kept at {output_path} for inspection" if output_path else ""
        raise ValidationMismatch(
            f"the converted model's outputs differ from the source's ({', '.join(failing)}): "
            f"max abs error {report.max_abs_error:.3g}, relative {report.max_rel_error:.3g}{where}",
            report=report, output_path=output_path)
