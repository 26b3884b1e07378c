"""Check an installed NeuralBridge (a venv with the wheel) the way a user meets it.

    python scripts/check_install.py /tmp/venv [--runs 10]

Reports: `--help` start-up against `python -c "import typer, rich"` (medians), which heavy
modules `--help` / COMMAND --help / --version / doctor / `inspect x.onnx` import, bash
completion through the installed script (`con` -> convert, `--to ` -> targets), `man -l`
warnings on the installed page, and `doctor --json`. Exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "tensorflow", "keras", "onnx2tf", "onnx2torch", "tf2onnx")
PROBE = f"""
import sys
from neuralbridge_cli.cli.app import app
try:
    app(sys.argv[1:], prog_name="neuralbridge")
except SystemExit:
    pass
print("HEAVY=" + ",".join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
"""


def median_seconds(cmd, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def heavy_imports(python: str, args, cwd) -> list[str]:
    proc = subprocess.run([python, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY=")][-1]
    return [m for m in line[6:].split(",") if m]


def bash_completion(venv: Path, words: list[str]) -> list[str]:
    script = venv / "share" / "bash-completion" / "completions" / "neuralbridge.bash"
    quoted = " ".join(f"'{w}'" for w in words)
    body = (f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
            f"_neuralbridge_completion neuralbridge; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HOME": tempfile.gettempdir()}
    proc = subprocess.run(["bash", "--norc", "-i", "-c", body], capture_output=True, text=True,
                          env=env)
    return [ln for ln in proc.stdout.splitlines() if ln]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("venv", type=Path)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    venv = args.venv.resolve()
    python, exe = str(venv / "bin" / "python"), str(venv / "bin" / "neuralbridge")
    failures = []

    base = median_seconds([python, "-c", "import typer, rich"], args.runs)
    help_s = median_seconds([exe, "--help"], args.runs)
    print(f"start-up: `import typer, rich` {base * 1000:.0f} ms, `neuralbridge --help` "
          f"{help_s * 1000:.0f} ms ({help_s / base:.2f}x; medians of {args.runs})")

    with tempfile.TemporaryDirectory() as tmp:
        onnx_ok = subprocess.run([python, "-c", (
            "import onnx; from onnx import TensorProto as T, helper as h; "
            "g = h.make_graph([h.make_node('Relu', ['x'], ['y'])], 'g', "
            "[h.make_tensor_value_info('x', T.FLOAT, ['N', 4])], "
            "[h.make_tensor_value_info('y', T.FLOAT, ['N', 4])]); "
            "onnx.save(h.make_model(g), 'relu.onnx')")], cwd=tmp).returncode == 0
        probes = [["--help"], ["--version"], ["doctor"]] + [
            [c, "--help"] for c in ("convert", "export-onnx", "load", "inspect", "doctor")]
        if onnx_ok:
            probes.append(["inspect", "relu.onnx"])
        for probe in probes:
            heavy = heavy_imports(python, probe, tmp)
            status = "ok" if not heavy else f"FAIL imports {heavy}"
            print(f"imports: neuralbridge {' '.join(probe):22s} {status}")
            if heavy:
                failures.append(f"{probe} imports {heavy}")

    for words, expected in ((["neuralbridge", "con"], ["convert"]),
                            (["neuralbridge", "convert", "m.onnx", "--to", ""], None)):
        got = bash_completion(venv, words)
        shown = " ".join(words[1:]) or "''"
        print(f"bash completion: `{shown}<TAB>` -> {' '.join(got)}")
        if (expected and got != expected) or (expected is None and "tflite" not in got):
            failures.append(f"completion of {words}: {got}")

    page = venv / "share" / "man" / "man1" / "neuralbridge.1"
    man = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                         env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat"})
    lines = len(man.stdout.splitlines())
    print(f"man -l {page}: exit {man.returncode}, {lines} lines, warnings: "
          f"{man.stderr.strip() or 'none'}")
    if man.returncode or man.stderr.strip():
        failures.append("man page warnings")

    doctor = subprocess.run([exe, "doctor", "--json"], capture_output=True, text=True)
    data = json.loads(doctor.stdout)
    counts = {s: sum(r["status"] == s for r in data["routes"]) for s in ("ok", "partial",
                                                                         "missing")}
    missing = [p["name"] for p in data["packages"] if p["version"] is None]
    print(f"doctor: exit {doctor.returncode}, routes {counts}, not installed: "
          f"{', '.join(missing) or 'none'}; issues: {[i['id'] for i in data['issues']]}")
    for route in ("torch:tf", "tf:torch", "onnx:onnx"):
        code = subprocess.run([exe, "doctor", "--route", route], capture_output=True).returncode
        print(f"doctor --route {route}: exit {code}")
    print("FAILED: " + "; ".join(failures) if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
