"""Numeric comparison of two models' outputs: one engine for every check.

An output passes when  max|a - b| <= atol + rtol * scale,  where scale = max|reference|.
The error relative to scale is reported too, because random-init models can have
outputs near zero, where any absolute check passes (the report flags that case).
Each output also gets its mean absolute error, cosine similarity and, when it looks like
classifier logits (rank 2, several classes), the top-1 agreement rate. `atol`/`rtol` can be
set per output name (`--atol logits:1e-3`, see parse_tolerances).
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
    mean_abs_error: float = 0.0
    cosine: float | None = None  # cosine similarity of the flattened outputs
    top1_agreement: float | None = None  # classifier-like outputs only
    atol: float | None = None  # the tolerances this output was judged with
    rtol: float | None = None


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


def parse_tolerances(values, default: float, flag: str = "--atol") -> tuple[float, dict]:
    """`["1e-4", "logits:1e-3"]` -> (1e-4, {"logits": 1e-3}): a bare number sets the default."""
    from .errors import UsageError

    per_output = {}
    for value in values or ():
        name, _, number = str(value).rpartition(":")
        try:
            tol = float(number)
        except ValueError:
            raise UsageError(f"bad {flag} {value!r}",
                             hint=f"write {flag} 1e-4 or {flag} output_name:1e-4") from None
        if not tol >= 0:
            raise UsageError(f"{flag} must be a number >= 0, not {number!r}")
        if name:
            per_output[name] = tol
        else:
            default = tol
    return default, per_output


def compare_outputs(reference: list, candidate: list, names: list[str] | None = None, *,
                    atol: float, rtol: float, batch: int = 2, atols: dict | None = None,
                    rtols: dict | None = None) -> ValidationReport:
    """Compare two lists of arrays output by output; `atols`/`rtols` override per name."""
    import numpy as np

    names = list(names or [])
    notes = []
    if len(reference) != len(candidate):
        notes.append(f"output count differs: {len(reference)} vs {len(candidate)}")
    rows = []
    for i, (ref, cand) in enumerate(zip(reference, candidate)):
        name = names[i] if i < len(names) and names[i] else f"output_{i}"
        out_atol = (atols or {}).get(name, atol)
        out_rtol = (rtols or {}).get(name, rtol)
        row = _compare_one(name, np.asarray(ref), np.asarray(cand), out_atol, out_rtol)
        row.atol, row.rtol = out_atol, out_rtol
        rows.append(row)
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
    ref64, cand64 = ref.astype(np.float64), cand.astype(np.float64)
    if not np.all(np.isfinite(cand)) and np.all(np.isfinite(ref)):
        return OutputComparison(name, tuple(ref.shape), float("inf"), float("inf"), 0.0, False,
                                "the converted model gives NaN/inf")
    # NaN or inf in the same place in both (log of a negative input, say) is agreement;
    # only the positions where both are finite are compared as numbers
    finite = np.isfinite(ref64) & np.isfinite(cand64)
    agree = ~finite & ((np.isnan(ref64) & np.isnan(cand64)) | (ref64 == cand64))
    if not np.all(finite | agree):
        return OutputComparison(name, tuple(ref.shape), float("inf"), float("inf"), 0.0, False,
                                "NaN/inf where the other model gives a number")
    skipped = int(finite.size - np.count_nonzero(finite))
    if skipped:
        ref64, cand64 = ref64[finite], cand64[finite]
        cand = cand64
    diff = np.abs(ref64 - cand64)
    max_abs = float(np.max(diff)) if diff.size else 0.0
    scale = float(np.max(np.abs(ref64))) if ref64.size else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = max_abs <= atol + rtol * scale
    note = ""
    if scale < atol:
        note = f"outputs are near zero (scale {scale:.2g}); this check is weak"
    elif ref.size > 1 and float(np.ptp(ref64)) <= 1e-7 * scale:
        # e.g. a softmax over untrained logits: any model giving that value would pass
        note = (f"the output is constant ({float(ref64.flat[0]):.3g} everywhere); this check "
                "cannot tell models apart")
    if skipped:
        note = "; ".join(filter(None, [note, f"{skipped} NaN/inf values, the same in both"]))
    return OutputComparison(name, tuple(ref.shape), max_abs, rel, scale, passed, note,
                            mean_abs_error=float(np.nanmean(diff)) if diff.size else 0.0,
                            cosine=_cosine(ref64, cand), top1_agreement=_top1(ref64, cand))


def _cosine(ref, cand) -> float | None:
    import numpy as np

    a, b = ref.ravel(), np.asarray(cand, np.float64).ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a, b) / norms)


def is_classifier_like(shape) -> bool:
    """Logits / probabilities: (batch, classes) with at least two classes."""
    return len(shape) == 2 and shape[-1] >= 2


def _top1(ref, cand) -> float | None:
    import numpy as np

    if not is_classifier_like(ref.shape):
        return None
    return float(np.mean(np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)))


def check(report: ValidationReport, output_path: str | None = None,
          what: str = "the converted model's outputs differ from the source's") -> None:
    """Raise ValidationMismatch (exit code 3) when the report failed."""
    if not report.passed:
        failing = [o.name for o in report.outputs if not o.passed]
        where = f"; the output was kept at {output_path} for inspection" if output_path else ""
        raise ValidationMismatch(
            f"{what} ({', '.join(failing)}): "
            f"max abs error {report.max_abs_error:.3g}, relative {report.max_rel_error:.3g}{where}",
            report=report, output_path=output_path)
