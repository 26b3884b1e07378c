"""The batch: discover -> shard -> skip what is up to date -> convert in workers -> report."""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import NeuralBridgeError, UsageError
from ..pipeline import DEFAULT_TARGET, target_for
from . import manifest
from .discovery import Model, discover
from .reports import FAILED, SKIPPED, BatchReport, ModelResult
from .shard import in_shard, parse_shard
from .workers import BASE_MODULES, Pool, Task, preload_modules


@dataclass
class BatchSpec:
    """What to convert and how: the batch-level flags of `neuralbridge convert DIR`."""

    source: str
    output: str
    to: str | None = None
    jobs: int | None = None  # default: number of cores
    timeout: float | None = None  # seconds per model
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    skip_existing: bool = False
    force: bool = False
    shard: str | None = None  # "K/N"
    quiet_workers: bool = True  # send the frameworks' own output to /dev/null

    def check(self) -> "BatchSpec":
        self.jobs = self.jobs if self.jobs is not None else (os.cpu_count() or 1)
        if self.jobs < 1:
            raise UsageError("--jobs must be >= 1")
        if self.timeout is not None and self.timeout <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        if self.skip_existing and self.force:
            raise UsageError("--skip-existing and --force contradict each other",
                             hint="--skip-existing already re-converts stale outputs")
        if Path(self.output).exists() and not Path(self.output).is_dir():
            raise UsageError(f"the output {self.output} is a file; a folder batch needs a folder",
                             hint="pass -o OUTDIR")
        return self


# on_event(kind, slot, model, payload): kind "start" | "progress" (payload: step text)
# | "done" (payload: ModelResult); slot is the worker number or None
EventCallback = Callable[[str, "int | None", str, object], None]


def run_batch(spec: BatchSpec, options_for: Callable[[dict], object],
              on_event: EventCallback | None = None) -> BatchReport:
    """Convert every model under spec.source into spec.output; never stops at a failed model.

    `options_for(settings)` builds the pipeline Options of one model from its
    neuralbridge.toml settings (the CLI merges its flags and --config in).
    """
    spec.check()
    on_event = on_event or (lambda *args: None)
    started = time.perf_counter()
    root, out = Path(spec.source), Path(spec.output)
    shard = parse_shard(spec.shard) if spec.shard else None
    models = discover(root, spec.include, spec.exclude, skip=[out])
    if not models:
        globs = f" matching {', '.join(spec.include)}" if spec.include else ""
        raise UsageError(f"no models found under {root}{globs}",
                         hint="models are files with a model extension (.onnx, .keras, .pt, ...) "
                              "or SavedModel folders")
    report = BatchReport(str(root), str(out), spec.to, spec.jobs, spec.shard,
                         discovered=len(models))
    mine = [m for m in models if in_shard(m.relative, shard)]
    on_event("plan", None, "", {"models": len(mine), "discovered": len(models), "jobs": spec.jobs})
    outputs = output_paths(mine, out, spec.to)
    results: dict[str, ModelResult] = {}

    def finish(result: ModelResult, slot=None) -> None:
        results[result.model] = result
        on_event("done", slot, result.model, result)

    tasks = []
    for model in mine:
        task = _plan(model, outputs[model.relative], spec, options_for, len(tasks))
        if isinstance(task, ModelResult):
            finish(task)
        else:
            tasks.append(task)
    if tasks:
        _run_tasks(tasks, spec, {m.relative: m for m in mine}, finish, on_event)
    report.results = [results[m.relative] for m in mine]
    report.seconds = time.perf_counter() - started
    return report


def output_paths(models: list[Model], out: Path, to: str | None) -> dict[str, Path]:
    """Mirror the input tree: sub/a.onnx -> OUT/sub/a<suffix>. When two models of a folder
    would get the same name (a.onnx and a.keras), both keep their source suffix
    (a.onnx.savedmodel, a.keras.savedmodel)."""
    def named(model: Model, keep_suffix: bool) -> Path:
        suffix = target_for(to, model.framework or "onnx").suffix
        relative = Path(model.relative)
        stem = relative.name if keep_suffix else relative.stem
        return out / relative.parent / f"{stem}{suffix}"

    first = {m.relative: named(m, False) for m in models}
    taken: dict[Path, int] = {}
    for path in first.values():
        taken[path] = taken.get(path, 0) + 1
    return {m.relative: named(m, True) if taken[first[m.relative]] > 1 else first[m.relative]
            for m in models}


def _plan(model: Model, output: Path, spec: BatchSpec, options_for, index: int):
    """A Task to run, or the model's final ModelResult when no conversion is needed/possible."""
    target = spec.to or (DEFAULT_TARGET.get(model.framework) if model.framework else None)
    base = dict(model=model.relative, source=str(model.path), output=str(output),
                format=model.format, target=target)
    if model.error:
        return ModelResult(**base, status=FAILED, error=model.error)
    try:
        options = options_for(model.settings)
    except NeuralBridgeError as exc:
        return ModelResult(**base, status=FAILED, error=f"settings: {exc}")
    fields = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("progress", "force")}
    key = manifest.settings_key(target, fields)
    digest = manifest.source_hash(model.path)
    if spec.skip_existing:
        record = manifest.is_up_to_date(output, digest, key)
        if record:
            return ModelResult(**{**base, "output": str(output.parent / record["output"])},
                               status=SKIPPED, route=record.get("route") or [],
                               max_abs_error=record.get("max_abs_error"))
    options.force = spec.force or spec.skip_existing  # a stale output is ours to replace
    if output.exists() and not options.force:
        return ModelResult(**base, status=FAILED,
                           error=f"{output} already exists (pass --skip-existing to resume, "
                                 f"or --force to overwrite)")
    return Task(index, model.relative, str(model.path), str(output), spec.to, options,
                record={"source_sha256": digest, "settings": key, "model": model.relative})


# rough seconds per model here (measured on the scripts/batch_folder.py models, imports
# excluded), by source framework and by target: the exporters' fixed costs (torch's dynamo
# exporter, tf2onnx, onnx2tf) dwarf what the model size adds
_SOURCE_COST = {"torch": 2.0, "tf": 0.5, "onnx": 0.2}
_TARGET_COST = {"tf": 20.0, "keras": 20.0, "h5": 20.0, "tflite": 25.0, "torch": 5.0,
                "torchscript": 5.0}


def expected_cost(model: Model, target: str | None) -> float:
    """A guess of a model's conversion time, to start the longest ones first."""
    return (_SOURCE_COST.get(model.framework or "", 0.0) + _TARGET_COST.get(target or "", 0.0)
            + model.size / 1e6 * 0.07)


def _run_tasks(tasks, spec, models, finish, on_event) -> None:
    for task in tasks:
        model = models[task.model]
        target = task.to or DEFAULT_TARGET.get(model.framework or "")
        task.cost = expected_cost(model, target)
        target_framework = target_for(target, model.framework or "onnx").framework
        task.preload = preload_modules({model.framework} if model.framework else set(),
                                       target_framework)
    # longest first: a long model started last would leave the other workers idle at the end
    tasks.sort(key=lambda t: -t.cost)

    def pool_event(kind, worker, task, payload):
        slot = worker.slot if worker is not None else None
        if kind != "done":
            on_event(kind, slot, task.model, payload)
            return
        model = models[task.model]
        finish(ModelResult(
            model=task.model, source=task.source,
            output=payload.get("output") or (task.output if payload["status"] == "ok" else None),
            status=payload["status"], format=model.format,
            target=payload.get("target") or task.to or DEFAULT_TARGET.get(model.framework),
            route=payload.get("route") or [], max_abs_error=payload.get("max_abs_error"),
            max_rel_error=payload.get("max_rel_error"), seconds=payload.get("seconds", 0.0),
            error=payload.get("error"), notes=payload.get("notes") or []), slot)

    Pool(spec.jobs, BASE_MODULES, spec.timeout, spec.quiet_workers, pool_event).run(tasks)
