"""Long-lived worker processes that import the frameworks once and convert model after model.

Processes, not threads: onnx2tf is patched at run time and is not thread-safe, and the
frameworks hold global state. The 'spawn' start method, because forking a process that has
imported TensorFlow or torch is unsafe. A worker that crashes or overruns its time limit is
killed and replaced by the pool; the model it was on is marked failed by the caller.

Workers start with onnx and onnxruntime only and import a framework when a task first needs
it; the pool hands each worker the tasks whose frameworks it already holds, so with two
workers one typically imports torch and the other TensorFlow, instead of both paying both
(about 5 s of CPU each here).

Protocol on each worker's pipe (all tuples):
  worker -> parent: ("ready",) once the base modules are imported,
                    ("progress", task_id, message), ("done", task_id, result_dict)
  parent -> worker: a Task, or None to stop.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from . import manifest
from .reports import CRASHED, FAILED, MISMATCH, OK, TIMEOUT


@dataclass
class Task:
    """One conversion to run in a worker (pickled to it)."""

    id: int
    model: str  # relative path, for messages
    source: str
    output: str
    to: str | None
    options: object  # pipeline Options (picklable: progress is set in the worker)
    record: dict = field(default_factory=dict)  # manifest fields (source hash, settings key)
    preload: list[str] = field(default_factory=list)  # modules to import before converting
    cost: float = 0.0  # expected seconds (scheduling only)


# ---------------------------------------------------------------- inside the worker
BASE_MODULES = ["onnx", "onnxruntime"]
# rough CPU seconds of a first import here (shared/ENVIRONMENT.md stack, 2 cores)
IMPORT_SECONDS = {"torch": 2.5, "onnxscript": 1.5, "onnx2torch": 1.0, "tensorflow": 4.0,
                  "tf2onnx": 0.5, "onnx2tf": 1.5}


def preload_modules(frameworks: set[str], target_framework: str | None) -> list[str]:
    """Modules a conversion from `frameworks` to `target_framework` needs imported: the
    frameworks and converters, torch first (triton must load before TensorFlow, lazy.py)."""
    names = list(BASE_MODULES)
    sources = set(frameworks)
    targets = {target_framework} if target_framework else {"torch", "tf"}
    needed = sources | targets
    if "torch" in needed:
        names.append("torch")
        if "torch" in sources and targets - {"torch"}:
            names.append("onnxscript")  # the dynamo ONNX exporter
        if "torch" in targets and sources - {"torch"}:
            names.append("onnx2torch")
    if "tf" in needed:
        names.append("tensorflow")
        if "tf" in sources and targets - {"tf"}:
            names.append("tf2onnx")
        if "tf" in targets and sources - {"tf"}:
            names.append("onnx2tf")
    return names


def import_cost(modules) -> float:
    """Expected seconds to import `modules` in a fresh worker."""
    return sum(IMPORT_SECONDS.get(name, 0.0) for name in modules)


def worker_main(conn, preload: list[str], quiet: bool, threads: int = 0) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    _die_with_parent()
    if threads:
        _limit_threads(threads)
    if quiet:  # framework chatter (onnx2tf prints to stdout) must not reach the user's terminal
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    import warnings

    warnings.simplefilter("ignore")
    _import_modules(preload, threads)
    conn.send(("ready",))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            # every result and record is already written: skip the frameworks' slow teardown
            # (seconds for TensorFlow and torch), which the whole batch would otherwise wait for
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        if any(name not in sys.modules for name in task.preload):
            conn.send(("progress", task.id, "importing frameworks"))
            _import_modules(task.preload, threads)
        result = convert_task(task, lambda message: conn.send(("progress", task.id, message)))
        conn.send(("done", task.id, result))


def _import_modules(names: list[str], threads: int) -> None:
    """Import what a task needs (lazy.require keeps triton and TensorFlow in a safe order)."""
    from .. import lazy

    for name in names:
        try:
            lazy.require(name)
        except Exception:  # the conversion that needs it reports the real error
            pass
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def threads_per_worker(jobs: int) -> int:
    """Each worker's share of the cores; 0 (framework defaults) for a single worker."""
    if jobs <= 1:
        return 0
    return max(1, (os.cpu_count() or 1) // jobs)


def _limit_threads(threads: int) -> None:
    """Keep N workers from each starting one thread per core: oversubscribed thread pools
    (OpenMP and onnxruntime spin while they wait) slow every worker down."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "TF_NUM_INTRAOP_THREADS", "NEURALBRIDGE_THREADS"):
        os.environ[name] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"


def convert_task(task: Task, progress) -> dict:
    """Run one conversion; never raises (the result dict says what happened)."""
    from ..errors import NeuralBridgeError, ValidationMismatch, first_line
    from ..pipeline import convert

    started = time.perf_counter()
    result = {"status": OK, "route": [], "output": None, "error": None, "notes": [],
              "max_abs_error": None, "max_rel_error": None}
    options = task.options
    options.progress = progress
    try:
        Path(task.output).parent.mkdir(parents=True, exist_ok=True)
        converted = convert(task.source, task.to, task.output, options)
        result.update(_describe(converted))
        manifest.write_record(Path(task.output), {
            **task.record, "source": task.source, "output": Path(converted.output).name,
            "target": converted.target_name, "route": converted.route,
            "max_abs_error": result["max_abs_error"]})
    except ValidationMismatch as exc:
        result.update(status=MISMATCH, error=str(exc), output=exc.output_path)
        if exc.report is not None:
            result.update(max_abs_error=exc.report.max_abs_error,
                          max_rel_error=exc.report.max_rel_error)
    except NeuralBridgeError as exc:
        result.update(status=FAILED, error=str(exc), notes=list(exc.details))
    except Exception as exc:  # a bug or a library failure: keep the traceback for --verbose
        result.update(status=FAILED, error=f"{type(exc).__name__}: {first_line(exc)}",
                      notes=[traceback.format_exc()])
    result["seconds"] = time.perf_counter() - started
    return result


def _describe(converted) -> dict:
    report = converted.report
    return {"route": list(converted.route), "output": converted.output,
            "target": converted.target_name, "notes": list(converted.notes),
            "max_abs_error": report.max_abs_error if report else None,
            "max_rel_error": report.max_rel_error if report else None}


def _die_with_parent() -> None:
    """Exit when the parent dies (kill -9, lost CI runner): no orphan keeps writing outputs."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch():  # portable fallback
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


# ---------------------------------------------------------------- in the parent
class Worker:
    """The parent's handle on one worker process and the task it is on."""

    def __init__(self, context, preload: list[str], quiet: bool, slot: int, threads: int = 0):
        self.slot = slot
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker_main, args=(child, preload, quiet, threads),
                                       name=f"neuralbridge-worker-{slot}", daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.loaded: set[str] = set(preload)  # modules imported in the worker, or on their way
        self.task: Task | None = None
        self.started = 0.0
        self.step = "starting"

    def assign(self, task: Task) -> None:
        self.task, self.started, self.step = task, time.monotonic(), "queued"
        self.loaded.update(task.preload)
        self.conn.send(task)

    def holds(self, task: Task) -> bool:
        return self.loaded.issuperset(task.preload)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.kill()


class Pool:
    """Runs tasks on `jobs` workers; calls on_event(kind, worker, task, payload) as things happen.

    kinds: "start" (task assigned), "progress" (payload: message), "done" (payload: result dict,
    status ok/failed/mismatch/timeout/crashed).
    """

    MAX_START_FAILURES = 3

    def __init__(self, jobs: int, preload: list[str], timeout: float | None = None,
                 quiet: bool = True, on_event=None):
        self.context = multiprocessing.get_context("spawn")
        self.jobs, self.preload, self.timeout, self.quiet = jobs, preload, timeout, quiet
        self.on_event = on_event or (lambda *args: None)
        self.workers: list[Worker] = []
        self.start_failures = 0

    def run(self, tasks: list[Task]) -> None:
        pending = list(tasks)  # in priority order
        self.workers = [self._spawn(slot) for slot in range(min(self.jobs, len(tasks)))]
        try:
            while pending or any(w.task for w in self.workers):
                for worker in self.workers:
                    if worker.ready and worker.task is None and pending:
                        index = self._pick(worker, pending)
                        if index is None:
                            continue  # better left to the workers that hold its frameworks
                        task = pending.pop(index)
                        worker.assign(task)
                        self.on_event("start", worker, task, None)
                self._wait_once()
                self._reap(pending)
        finally:
            for worker in self.workers:
                worker.stop() if worker.ready and worker.task is None else worker.kill()

    def _pick(self, worker: Worker, pending: list[Task]) -> int | None:
        """Index of the pending task `worker` should take next, or None to stay idle.

        In priority order, the first task whose modules the worker holds, or that no other
        worker holds, or whose framework is worth importing a second time: the work W waiting
        for it, shared by its h holders, takes W/h; with this worker too, about
        (W + import)/(h + 1), which is less when W > h * import."""
        others = [w for w in self.workers if w is not worker]
        for index, task in enumerate(pending):
            holders = sum(1 for w in others if w.holds(task))
            if worker.holds(task) or holders == 0:
                return index
            missing = set(task.preload) - worker.loaded
            waiting = sum(t.cost for t in pending if missing.intersection(t.preload))
            if waiting > holders * import_cost(missing):
                return index
        return None

    def _spawn(self, slot: int) -> Worker:
        return Worker(self.context, self.preload, self.quiet, slot, threads_per_worker(self.jobs))

    def _wait_once(self) -> None:
        handles = [w.conn for w in self.workers] + [w.process.sentinel for w in self.workers]
        for ready in wait(handles, timeout=self._next_deadline()):
            worker = next((w for w in self.workers if ready in (w.conn, w.process.sentinel)), None)
            if worker is not None and ready is worker.conn:
                self._receive(worker)

    def _next_deadline(self) -> float:
        if not self.timeout:
            return 1.0
        busy = [w.started + self.timeout - time.monotonic() for w in self.workers if w.task]
        return max(0.05, min(busy + [1.0]))

    def _receive(self, worker: Worker) -> None:
        while True:
            try:
                if not worker.conn.poll():
                    return
                message = worker.conn.recv()
            except (EOFError, OSError):
                return  # dead: _reap handles it
            if message[0] == "ready":
                worker.ready = True
            elif message[0] == "progress" and worker.task and message[1] == worker.task.id:
                worker.step = message[2]
                self.on_event("progress", worker, worker.task, message[2])
            elif message[0] == "done" and worker.task and message[1] == worker.task.id:
                task, worker.task = worker.task, None
                self.on_event("done", worker, task, message[2])

    def _reap(self, pending: list[Task]) -> None:
        """Replace dead and overdue workers; their tasks fail."""
        now = time.monotonic()
        for index, worker in enumerate(list(self.workers)):
            overdue = worker.task and self.timeout and now - worker.started > self.timeout
            if worker.process.is_alive() and not overdue:
                continue
            self._receive(worker)  # a result may have arrived just before it exited
            task = worker.task
            code = worker.process.exitcode
            worker.kill()
            if task is not None:
                status, error = ((TIMEOUT, f"timed out after {self.timeout:g} s (worker killed)")
                                 if overdue else (CRASHED, f"the worker crashed ({_describe_exit(code)})"
                                                  f" while {worker.step}"))
                self.on_event("done", worker, task, {"status": status, "error": error,
                                                     "seconds": now - worker.started})
            elif not worker.ready:
                self.start_failures += 1
                if self.start_failures >= self.MAX_START_FAILURES:
                    self._fail_all(pending, f"worker processes fail to start "
                                            f"({_describe_exit(code)})")
            self.workers[index] = self._spawn(worker.slot) if pending else None
        self.workers = [w for w in self.workers if w is not None]

    def _fail_all(self, pending: list[Task], error: str) -> None:
        while pending:
            task = pending.pop()
            self.on_event("done", None, task, {"status": FAILED, "error": error, "seconds": 0.0})


def _describe_exit(code) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
