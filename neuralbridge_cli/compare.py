"""`validate A B`: run two models of any formats on the same inputs and compare their outputs.

Inputs come from the reference model's specs (seeded, at batch 2 and at a second batch size
to catch shapes baked into a graph), from `--samples N` seeded draws, or from a data file.
When one model takes channels-last images and the other channels-first, the inputs are
transposed for the second one and the report says so. The numbers come from
validate.compare_outputs, the same engine `convert` uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import ConversionError, InputSpecError, NeuralBridgeError
from .model import ModelHandle
from .options import Options
from .specs import DEFAULT_BATCH, TensorSpec, dummy_inputs
from .validate import ValidationReport, check, compare_outputs

SECOND_BATCH = 3  # a batch size no exporter defaults to


@dataclass
class Comparison:
    """A validate run: the report plus what was fed and the raw outputs (for plots)."""

    report: ValidationReport
    reference: ModelHandle
    candidate: ModelHandle
    batches: list[int] = field(default_factory=list)
    layout_notes: list[str] = field(default_factory=list)
    ref_outputs: list = field(default_factory=list)  # per output, all runs concatenated
    cand_outputs: list = field(default_factory=list)

    def as_dict(self) -> dict:
        data = self.report.as_dict()
        data.update(batches=self.batches, layout=self.layout_notes)
        return data


def load_model(source, options: Options) -> ModelHandle:
    """Load a model and settle its input specs (None when it cannot tell)."""
    from .pipeline import load_source, resolve_specs

    handle = load_source(source, options)
    try:
        resolve_specs(handle, options)
    except InputSpecError:
        handle.inputs = None
    return handle


def layout_perm(src: TensorSpec, dst: TensorSpec) -> tuple[int, ...] | None:
    """The permutation that turns a `src` array into what `dst` takes, when one is NCHW-like
    and the other NHWC-like; None when they already agree or it cannot tell."""
    if src.rank < 3 or src.rank != dst.rank or _same_dims(src.shape, dst.shape):
        return None
    to_last = (0,) + tuple(range(2, src.rank)) + (1,)
    to_first = (0, src.rank - 1) + tuple(range(1, src.rank - 1))
    for perm in (to_last, to_first):
        if _same_dims(tuple(src.shape[p] for p in perm), dst.shape):
            return perm
    return None


def _same_dims(a, b) -> bool:
    """Equal where both are known; at least the channel-like dims must be known to differ."""
    return all(x == y for x, y in zip(a[1:], b[1:]) if isinstance(x, int) and isinstance(y, int))


def map_layouts(reference: ModelHandle, candidate: ModelHandle) -> list[str]:
    """Set candidate.input_perms where its layout differs from the reference's; notes."""
    notes = []
    if not reference.inputs or not candidate.inputs:
        return notes
    perms = {}
    for i, (src, dst) in enumerate(zip(reference.inputs, candidate.inputs)):
        perm = layout_perm(src, dst)
        if perm is not None:
            perms[i] = perm
            kind = "NCHW -> NHWC" if perm[-1] == 1 else "NHWC -> NCHW"
            notes.append(f"input {src.name}: {kind} (the second model takes "
                         f"{dst.shape_text()}, the first {src.shape_text()}); inputs transposed")
    candidate.input_perms = perms
    return notes


def _soften_default_sizes(handle: ModelHandle) -> None:
    """Sizes the torch backend guessed (224x224 for a first Conv2d) are not the model's: let
    the other model, or the defaults, decide them."""
    if not handle.inputs or not any("is a default" in note for note in handle.notes):
        return
    handle.inputs = [replace(s, shape=tuple(s.shape[:2]) + (None,) * (s.rank - 2))
                     if s.rank >= 3 else s for s in handle.inputs]


def _merged_specs(reference: ModelHandle, candidate: ModelHandle) -> list[TensorSpec] | None:
    """The reference's specs with unknown dims taken from the candidate (layout mapped)."""
    if not reference.inputs:
        return candidate.inputs
    if not candidate.inputs or len(candidate.inputs) != len(reference.inputs):
        return reference.inputs
    merged = []
    for i, (ref, cand) in enumerate(zip(reference.inputs, candidate.inputs)):
        perm = candidate.input_perms.get(i, tuple(range(cand.rank)))
        dims = list(ref.shape)
        for k, src_axis in enumerate(perm):
            if src_axis < len(dims) and not isinstance(dims[src_axis], int) and \
                    isinstance(cand.shape[k], int) and (src_axis > 0 or cand.shape[k] > 0):
                dims[src_axis] = cand.shape[k]
        merged.append(replace(ref, shape=tuple(dims)))
    return merged


def input_batches(specs, handles, samples: int = 1, seed: int = 0) -> list[list]:
    """Seeded input sets: each of `samples` draws at batch 2 and at SECOND_BATCH, unless a
    model fixes its batch size (then only that)."""
    fixed = {spec.shape[0] for h in handles for spec in h.inputs or []
             if spec.shape and isinstance(spec.shape[0], int)}
    sizes = sorted(fixed) if fixed else [DEFAULT_BATCH, SECOND_BATCH]
    return [dummy_inputs(specs, batch, seed=seed + k) for k in range(max(samples, 1))
            for batch in sizes]


def compare_models(a, b, options: Options, *, data: dict | None = None, samples: int = 1,
                   atols: dict | None = None, rtols: dict | None = None) -> Comparison:
    """Run `a` (reference) and `b` on the same inputs; return the comparison (no raise)."""
    import numpy as np

    from .datafiles import arrays_for
    from .pipeline import run_model

    reference = load_model(a, options)
    candidate = load_model(b, options)
    _soften_default_sizes(reference)
    _soften_default_sizes(candidate)
    notes = map_layouts(reference, candidate) if reference.inputs else []
    specs = _merged_specs(reference, candidate)
    if not specs:
        raise InputSpecError(f"cannot tell the inputs of {reference.name} or {candidate.name}",
                             hint="pass --input-shape, or --inputs data.npz")
    if data is not None:
        runs = [[np.asarray(x) for x in arrays_for(specs, data)]]
    else:
        runs = input_batches(specs, (reference, candidate), samples)
    refs, cands, failures = [], [], []
    for arrays in runs:
        batch = int(arrays[0].shape[0]) if arrays[0].ndim else 1
        options.progress(f"running both models at batch {batch}")
        ref = run_model(reference, arrays)
        try:
            cand = run_model(candidate, arrays)
        except NeuralBridgeError as exc:  # e.g. a batch size baked into the graph
            failures.append((batch, str(exc)))
            continue
        refs.append(ref)
        cands.append(cand)
    if not refs:
        raise ConversionError(f"{candidate.name} failed on every input: {failures[0][1]}")
    names = _output_names(reference, candidate, len(refs[0]))
    ref_all = _concat(refs)
    cand_all = _concat(cands)
    report = compare_outputs(ref_all, cand_all, names, atol=options.atol, rtol=options.rtol,
                             batch=int(runs[0][0].shape[0]) if runs[0][0].ndim else 1,
                             atols=atols, rtols=rtols)
    report.reference, report.candidate = str(a), str(b)
    batches = sorted({int(r[0].shape[0]) for r in runs if r[0].ndim})
    report.notes.extend(notes)
    report.notes.append(f"{len(runs)} input set(s), batch sizes {batches}"
                        + (" from the data file" if data is not None else ", seeded"))
    for batch, message in failures:  # a graph that runs only at some batch sizes
        report.outputs.append(replace(report.outputs[0], name=f"(batch {batch})", passed=False,
                                      note=message, max_abs_error=float("inf"),
                                      max_rel_error=float("inf")))
    return Comparison(report, reference, candidate, batches, notes, ref_all, cand_all)


def _output_names(reference: ModelHandle, candidate: ModelHandle, count: int) -> list[str]:
    for handle in (reference, candidate):
        if len(handle.output_names) == count and all(handle.output_names):
            return handle.output_names
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _concat(runs: list[list]) -> list:
    """Per output, the runs stacked along the batch axis (flattened when shapes differ)."""
    import numpy as np

    out = []
    for i in range(min(len(r) for r in runs)):
        arrays = [np.asarray(r[i]) for r in runs]
        try:
            out.append(np.concatenate(arrays, axis=0) if arrays[0].ndim else np.stack(arrays))
        except ValueError:
            out.append(np.concatenate([x.ravel() for x in arrays]))
    return out


def validate_models(a, b, options: Options, **kwargs) -> Comparison:
    """compare_models, then raise ValidationMismatch (exit 3) naming the failing outputs."""
    result = compare_models(a, b, options, **kwargs)
    check(result.report, what=f"{b} differs from {a}")
    return result


def plot_errors(result: Comparison, path: str) -> str:
    """A histogram per output of |a - b| (log scale), written to `path` (PNG, SVG, PDF)."""
    import numpy as np

    from . import lazy

    lazy.require("matplotlib", "draw --plot charts")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.report.outputs[:len(result.ref_outputs)]
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 2.6 * len(rows)), squeeze=False)
    for ax, row, ref, cand in zip(axes[:, 0], rows, result.ref_outputs, result.cand_outputs):
        ref, cand = np.asarray(ref, np.float64), np.asarray(cand, np.float64)
        err = np.abs(ref.ravel() - cand.reshape(ref.shape).ravel()) if ref.size == cand.size \
            else np.array([np.inf])
        err = err[np.isfinite(err)]
        floor = max(float(err[err > 0].min()) if (err > 0).any() else 1e-12, 1e-12)
        ax.hist(np.log10(np.maximum(err, floor)), bins=50, color="tab:blue")
        ax.axvline(np.log10(max(row.atol + row.rtol * row.scale, 1e-30)), color="tab:red",
                   linestyle="--", label="tolerance")
        ax.set_title(f"{row.name}: max {row.max_abs_error:.3g}, mean {row.mean_abs_error:.3g}"
                     f" ({'pass' if row.passed else 'FAIL'})", fontsize=9)
        ax.set_xlabel("log10 |a - b|")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
