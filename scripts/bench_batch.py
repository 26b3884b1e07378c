"""Benchmark `neuralbridge convert DIR` (not a timed test): --jobs 2 vs --jobs 1 vs a shell loop.

    python scripts/bench_batch.py [FOLDER] [WORK]     # FOLDER is built when missing

All three runs convert the same folder (scripts/batch_folder.py) to ONNX, one after the other
in this one invocation, so they see the same machine. The shell loop calls
`python -m neuralbridge_cli convert FILE` once per model, with that model's settings in a
--config file (what a user's loop over the folder would do), so it pays the framework imports
once per file. The figures are written between the bench markers of docs/BATCH.md.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DOC = REPO / "docs" / "BATCH.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
# as a user's shell runs them: with the byte-code cache (PYTHONDONTWRITEBYTECODE, set on some
# machines, makes every start compile the package from source, ~15 ms on `--help`)
USER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV = {**USER_ENV, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get(
    "PYTHONPATH", "")) if p), "TF_CPP_MIN_LOG_LEVEL": "3"}


def timed(label: str, command: list[str], **kwargs) -> dict:
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(command, env=ENV, **kwargs)
    seconds = time.perf_counter() - started
    print(f"{label}: {seconds:.1f} s (exit {proc.returncode}, load {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f})", flush=True)
    return {"label": label, "seconds": round(seconds, 1), "exit_code": proc.returncode,
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def _spin(n: int = 30_000_000) -> float:
    started, total = time.perf_counter(), 0
    for i in range(n):
        total += i
    return time.perf_counter() - started


def cpu_probe() -> float:
    """What a second process adds right now: throughput of 2 busy processes vs 1 (2.0 on two
    idle cores; 1.0 when other jobs leave no second core)."""
    import multiprocessing

    one = _spin()
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_spin, [30_000_000] * 2)
    return round(2 * one / (time.perf_counter() - started), 2)


def batch_run(folder: Path, work: Path, jobs: int, run: int = 0) -> dict:
    out, report = work / f"out-jobs{jobs}-{run}", work / f"jobs{jobs}-{run}.json"
    result = timed(f"--jobs {jobs}", [sys.executable, "-m", "neuralbridge_cli", "convert",
                                      str(folder), "--to", "onnx", "-o", str(out), "--jobs",
                                      str(jobs), "--report", str(report)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counts = json.loads(report.read_text())["counts"]
    return {**result, "ok": counts["ok"], "failed": sum(counts.values()) - counts["ok"]}


def median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def shell_loop(folder: Path, work: Path) -> dict:
    """Write and run loop.sh: one `neuralbridge convert` process per model."""
    from neuralbridge_cli.batch import discover

    out, configs = work / "out-loop", work / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    lines = ["#!/usr/bin/env bash", "ok=0; failed=0"]
    for i, model in enumerate(discover(folder)):
        target = out / Path(model.relative).parent / (Path(model.relative).stem + ".onnx")
        command = [sys.executable, "-m", "neuralbridge_cli", "convert", str(model.path),
                   "--to", "onnx", "-o", str(target)]
        if model.settings:
            config = configs / f"{i}.json"
            config.write_text(json.dumps(model.settings))
            command += ["--config", str(config)]
        lines.append(f"mkdir -p {shlex.quote(str(target.parent))}")
        lines.append(f"if {shlex.join(command)} >/dev/null 2>&1; then ok=$((ok+1)); "
                     f"else failed=$((failed+1)); fi")
    lines.append('echo "$ok $failed"')
    script = work / "loop.sh"
    script.write_text("\n".join(lines) + "\n")
    result = timed("shell loop", ["bash", str(script)], stdout=subprocess.PIPE, text=True)
    # loop.sh prints "<ok> <failed>" last
    ok = sum(1 for p in out.rglob("*.onnx") if not p.name.startswith("."))
    return {**result, "ok": ok, "failed": None}


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("batch-models")
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("batch-bench")
    if not folder.exists():
        subprocess.run([sys.executable, str(REPO / "scripts" / "batch_folder.py"), "build",
                        str(folder)], env=ENV, check=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    from neuralbridge_cli.batch import discover

    count = len(discover(folder))
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    probe_before = cpu_probe()
    # --jobs 2 and --jobs 1 in pairs, the order alternating (2 1, 1 2, 2 1, ...), so that a
    # drift of the shared machine hits both; the ratio is the median of the pairs' ratios
    pairs = []
    for run in range(repeats):
        order = (2, 1) if run % 2 == 0 else (1, 2)
        pair = {jobs: batch_run(folder, work, jobs, run) for jobs in order}
        pairs.append(pair)
    loop = shell_loop(folder, work)
    probes = [probe_before, cpu_probe()]
    loop["failed"] = count - loop["ok"]
    runs = {"jobs2": median_run([p[2] for p in pairs]), "jobs1": median_run([p[1] for p in pairs]),
            "loop": loop}
    pair_ratios = sorted(round(p[1]["seconds"] / p[2]["seconds"], 2) for p in pairs)
    figures = {"models": count, "cpus": os.cpu_count(), "cpu_model": cpu_model(),
               "python": platform.python_version(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs,
               "pairs": [{str(k): v["seconds"] for k, v in p.items()} for p in pairs],
               "pair_ratios": pair_ratios,
               "jobs2_vs_jobs1": statistics.median(pair_ratios),
               "jobs2_vs_loop": round(runs["loop"]["seconds"] / runs["jobs2"]["seconds"], 2),
               "jobs1_vs_loop": round(runs["loop"]["seconds"] / runs["jobs1"]["seconds"], 2),
               "two_process_throughput": probes}
    (work / "bench.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    write_doc(figures)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_doc(f: dict) -> None:
    n = len(f["pairs"])
    rows = [(f"`--jobs 2` (2 workers), median of {n}", f["runs"]["jobs2"]),
            (f"`--jobs 1` (1 worker), median of {n}", f["runs"]["jobs1"]),
            ("shell loop, one `neuralbridge convert` per file", f["runs"]["loop"])]
    table = ["| run | wall seconds | converted | failed | load avg before -> after |",
             "| --- | ---: | ---: | ---: | --- |"]
    table += [f"| {name} | {r['seconds']} | {r['ok']} | {r['failed']} | "
              f"{r['load_before']} -> {r['load_after']} |" for name, r in rows]
    pairs = ", ".join(f"{p['2']} / {p['1']}" for p in f["pairs"])
    text = "\n".join([
        START,
        f"Measured {f['date']} by `scripts/bench_batch.py` on {f['models']} models "
        f"(`scripts/batch_folder.py`, target ONNX), {f['cpus']} cores ({f['cpu_model']}), "
        f"Python {f['python']}; all runs in one invocation, `--jobs 2` and `--jobs 1` in "
        f"alternating pairs.",
        "",
        *table,
        "",
        f"- `--jobs 2` vs `--jobs 1`: **{f['jobs2_vs_jobs1']}x** faster (target 1.6x); median of "
        f"the pairs' ratios {f['pair_ratios']} (seconds, jobs 2 / jobs 1: {pairs})",
        f"- `--jobs 2` vs the shell loop: **{f['jobs2_vs_loop']}x** faster (target 3x)",
        f"- `--jobs 1` vs the shell loop: {f['jobs1_vs_loop']}x (imports paid once per worker "
        f"instead of once per file)",
        f"- CPU probe (a pure-Python loop in 1 vs 2 processes, before and after the runs): 2 "
        f"processes got {f['two_process_throughput'][0]}x and {f['two_process_throughput'][1]}x "
        f"the throughput of one (2.0 = two free cores)",
        END])
    doc = DOC.read_text() if DOC.exists() else f"# Batch conversion\n\n{START}\n{END}\n"
    head, _, rest = doc.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + text + tail)


if __name__ == "__main__":
    main()
