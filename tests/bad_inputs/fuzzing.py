"""Mutation fuzzing of model files: every outcome is success or a NeuralBridgeError.

Seeds are small valid models (ONNX, .keras, .tflite) built from code. A mutation is a list
of edits (bit flip, truncation, inserted bytes, overwritten run of bytes) drawn by
hypothesis. Each mutated file goes through `inspect`; some also through `convert`
(ONNX -> ONNX is cheap; .keras/.tflite -> ONNX runs tf2onnx and is not, so those are rare).
Used by tests/bad_inputs/test_fuzz.py (a few hundred cases) and scripts/fuzz.py (10,000).
"""
from __future__ import annotations

import os
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import builders
from neuralbridge_cli.errors import NeuralBridgeError
from neuralbridge_cli.inspection import inspect_model
from neuralbridge_cli.options import Options
from neuralbridge_cli.pipeline import convert

KINDS = ("onnx", "keras", "tflite")
LAST_CASE = os.environ.get("NB_FUZZ_LAST_CASE")  # path prefix; see run_case


def make_seeds(folder: Path, kinds=KINDS) -> dict[str, bytes]:
    """Valid seed files, as bytes, by kind."""
    makers = {"onnx": lambda p: builders.onnx_mlp(p) and p, "keras": builders.keras_dense,
              "tflite": builders.tflite_dense}
    return {kind: Path(makers[kind](folder / f"seed.{kind}")).read_bytes() for kind in kinds}


@st.composite
def mutations(draw, size: int):
    """A short list of edits, applied in order, to a file of `size` bytes."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "flip", "truncate", "insert", "overwrite")))
        pos = draw(st.integers(0, max(size - 1, 0)))
        if op == "flip":
            edits.append(("flip", pos, draw(st.integers(0, 7))))
        elif op == "truncate":
            edits.append(("truncate", pos, 0))
        elif op == "insert":
            edits.append(("insert", pos, draw(st.binary(min_size=1, max_size=16))))
        else:
            edits.append(("overwrite", pos, draw(st.binary(min_size=1, max_size=32))))
    return edits


def mutate(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for op, pos, arg in edits:
        pos = min(pos, max(len(buf) - 1, 0))
        if not buf:
            break
        if op == "flip":
            buf[pos] ^= 1 << arg
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = arg
        else:
            buf[pos:pos + len(arg)] = arg
    return bytes(buf)


@dataclass
class Tally:
    """Counts per outcome, and the crashes (anything not a NeuralBridgeError)."""

    cases: int = 0
    ok: int = 0
    clean_errors: int = 0
    converts: int = 0
    crashes: list = field(default_factory=list)
    inspected: dict = field(default_factory=dict)  # successful inspects per kind

    def summary(self) -> str:
        return (f"{self.cases} fuzz cases ({self.converts} with convert): {self.ok} succeeded, "
                f"{self.clean_errors} clean NeuralBridgeError, {len(self.crashes)} crashes")


def run_case(kind: str, data: bytes, convert_every: int, tally: Tally) -> BaseException | None:
    """Inspect one mutated file and, for every n-th one that inspects fine, convert it to ONNX;
    return the exception if it is a crash."""
    tally.cases += 1
    if LAST_CASE:  # kept on disk, so a case that kills the process (a segfault) can be replayed
        Path(f"{LAST_CASE}.{kind}").write_bytes(data)
    with tempfile.TemporaryDirectory(prefix="nbfuzz-") as folder:
        path = Path(folder) / f"model.{kind}"
        path.write_bytes(data)
        try:
            inspect_model(str(path), Options())
            tally.inspected[kind] = tally.inspected.get(kind, 0) + 1
            if convert_every and tally.inspected[kind] % convert_every == 0:
                tally.converts += 1
                convert(str(path), "onnx", str(Path(folder) / "out.onnx"), Options())
            tally.ok += 1
        except NeuralBridgeError:
            tally.clean_errors += 1
        except Exception as exc:  # a crash: what the fuzzer is looking for
            tally.crashes.append((kind, type(exc).__name__, str(exc)[:200],
                                  traceback.format_exc(limit=-4)))
            return exc
    return None


def build_test(seeds: dict[str, bytes], tally: Tally, examples: int, convert_every: dict,
               raise_on_crash: bool = True, derandomize: bool = True):
    """A hypothesis-driven callable running `examples` cases over the seed kinds."""
    sizes = {k: len(v) for k, v in seeds.items()}
    case = st.sampled_from(sorted(seeds)).flatmap(
        lambda kind: st.tuples(st.just(kind), mutations(sizes[kind])))

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(case)
    def fuzz(kind_and_edits):
        kind, edits = kind_and_edits
        crash = run_case(kind, mutate(seeds[kind], edits), convert_every.get(kind, 0), tally)
        if crash is not None and raise_on_crash:
            raise crash

    return fuzz
