"""The bad-input corpus: how each input is made, the command, the exit code, the message.

Each case builds its files in a fresh folder and returns the CLI arguments. The test runs the
real CLI and checks: the exit code, exactly one `error:` line that names the file (`names`)
and contains `phrase` (what is wrong) and `todo` (what to do), no traceback, nothing written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import builders as b

USAGE, FAILURE = 2, 1


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Path], list]  # builds the inputs, returns CLI args
    code: int
    phrase: str  # what is wrong (in the error line, case-insensitive)
    todo: str | None = None  # what to do (in the error line)
    names: str | None = "model"  # a file name the line must mention; None: no file involved


def _mlp(w: Path, name: str = "model.onnx") -> Path:
    return b.onnx_mlp(w / name) and (w / name)


def _sd(w: Path, name: str = "model.pt", **kw) -> Path:
    return b.torch_state_dict(w / name, **kw)


def _models_py(w: Path) -> None:
    (w / "nbmodels.py").write_text(b.MODELS_PY)


def _config(w: Path, name: str, text: str) -> Path:
    (w / name).write_text(text)
    return w / name


CASES = [
    # ---- files that are missing, empty or not models
    Case("missing-file", lambda w: ["convert", "model.onnx", "--to", "tf"], USAGE,
         "no such file", "check the path"),
    Case("missing-file-inspect", lambda w: ["inspect", "model.keras"], USAGE, "no such file"),
    Case("empty-onnx", lambda w: (w / "model.onnx").touch() or ["convert", "model.onnx", "--to",
                                                                  "tf"], USAGE, "empty file", "re-export"),
    Case("empty-pt", lambda w: (w / "model.pt").touch() or ["inspect", "model.pt"], USAGE,
         "empty file"),
    Case("random-onnx", lambda w: [b.random_bytes(w / "model.onnx"), "--to", "tf"], FAILURE,
         "not a readable onnx model", "re-export"),
    Case("random-pt", lambda w: [b.random_bytes(w / "model.pt"), "--to", "onnx"], FAILURE,
         "not a readable pytorch file", "re-export"),
    Case("random-bin", lambda w: [b.random_bytes(w / "model.bin"), "--to", "onnx"], FAILURE,
         "not a readable pytorch file"),
    Case("random-pth-zip", lambda w: [b.zip_with(w / "model.pth", {"junk.txt": b"x" * 100}),
                                      "--to", "onnx"], FAILURE, "not a readable pytorch file"),
    Case("random-keras", lambda w: [b.random_bytes(w / "model.keras"), "--to", "onnx"], FAILURE,
         "not a keras", "re-export"),
    Case("random-h5", lambda w: [b.random_bytes(w / "model.h5"), "--to", "onnx"], FAILURE,
         "not a readable", "re-export"),
    Case("random-tflite", lambda w: [b.random_bytes(w / "model.tflite"), "--to", "onnx"], FAILURE,
         "not a readable tflite", "re-export"),
    Case("random-pt2", lambda w: [b.random_bytes(w / "model.pt2"), "--to", "onnx"], FAILURE,
         "not a readable", "re-export"),
    Case("random-safetensors", lambda w: [b.random_bytes(w / "model.safetensors"), "--to", "onnx",
                                          "--model-class", "torch.nn:Identity"], FAILURE,
         "cannot load", "re-export"),
    Case("random-no-extension", lambda w: [b.random_bytes(w / "model"), "--to", "onnx"], USAGE,
         "cannot tell the format", "--from"),
    Case("onnx-sniffed-garbage", lambda w: (w / "model").write_bytes(b"\x08\x07\xff\xff\xff") and
         ["model", "--to", "tf"], FAILURE, "not a readable onnx model"),
    # ---- truncated / corrupt archives
    Case("truncated-onnx", lambda w: [b.truncate(_mlp(w, "full.onnx"), w / "model.onnx", 0.6),
                                      "--to", "tf"], FAILURE, "not a readable onnx model",
         "re-export"),
    Case("truncated-keras", lambda w: [b.truncate(b.keras_dense(w / "full.keras"),
                                                  w / "model.keras", 0.5), "--to", "onnx"],
         FAILURE, "not a keras", "re-export"),
    Case("keras-zip-without-config", lambda w: [b.zip_with(w / "model.keras", {"a.txt": b"hi"}),
                                                "--to", "onnx"], FAILURE, "not a keras"),
    Case("truncated-pt", lambda w: [b.truncate(_sd(w, "full.pt"), w / "model.pt", 0.5), "--to",
                                    "onnx", "--model-class", "torch.nn:Linear"], FAILURE,
         "not a readable pytorch file"),
    Case("corrupt-pt2", lambda w: [b.zip_with(w / "model.pt2", {
        "model/archive_format": b"pt2", "model/models/model.json": b"{not json"}),
        "--to", "onnx"], FAILURE, "cannot load", "re-export"),
    Case("onnx-missing-external-data", lambda w: [b.onnx_missing_external_data(w / "model.onnx"),
                                                  "--to", "tf"], FAILURE, "not a readable onnx",
         "external data"),
    Case("onnx-empty-graph", lambda w: [b.onnx_empty_graph(w / "model.onnx"), "--to", "tf"],
         FAILURE, "holds no onnx graph", "re-export"),
    # ---- ONNX graphs that load but cannot go anywhere
    Case("onnx-fails-checker", lambda w: [b.onnx_failing_checker(w / "model.onnx"), "--to", "tf"],
         FAILURE, "onnx.checker", "re-export"),
    Case("onnx-unsupported-op", lambda w: [b.onnx_custom_op(w / "model.onnx"), "--to", "tf"],
         FAILURE, "Frobnicate", "op"),
    Case("onnx-unsupported-op-to-onnx", lambda w: [b.onnx_custom_op(w / "model.onnx"),
                                                   "--to", "onnx", "-o", "out.onnx"],
         FAILURE, "Frobnicate"),
    Case("onnx-string-input", lambda w: [b.onnx_string_io(w / "model.onnx"), "--to", "tf"],
         USAGE, "string", "numeric"),
    Case("onnx-string-output", lambda w: [b.onnx_string_io(w / "model.onnx", output_only=True),
                                          "--to", "tf"], FAILURE, "string", None),
    # ---- folders
    Case("savedmodel-without-pb", lambda w: (w / "model").mkdir() or
         (w / "model" / "variables").mkdir() or ["model", "--to", "onnx"], USAGE,
         "without saved_model.pb", "SavedModel"),
    Case("folder-without-models", lambda w: (w / "model").mkdir() or
         (w / "model" / "notes.txt").write_text("x") and ["model", "--to", "onnx"], USAGE,
         "without saved_model.pb"),
    Case("savedmodel-corrupt-pb", lambda w: (w / "model").mkdir() or
         (w / "model" / "saved_model.pb").write_bytes(b"\x01garbage") and ["model", "--to", "onnx"],
         FAILURE, "cannot load savedmodel", "re-export"),
    # ---- import paths and state dicts
    Case("import-missing-module", lambda w: ["nosuchpkg.models:Net", "--to", "onnx"], USAGE,
         "cannot import", "installed", names="nosuchpkg"),
    Case("import-missing-attribute", lambda w: ["torch.nn:NoSuchNet", "--to", "onnx"], USAGE,
         "no attribute", names="NoSuchNet"),
    Case("import-not-a-module", lambda w: _models_py(w) or ["nbmodels:not_a_module", "--to",
                                                           "onnx"], USAGE, "not a torch.nn.module",
         names="nbmodels"),
    Case("import-factory-raises", lambda w: _models_py(w) or ["nbmodels:broken_factory", "--to",
                                                             "onnx"], FAILURE, "failed",
         "--model-args", names="nbmodels"),
    Case("import-module-raises", lambda w: (w / "nbbroken.py").write_text(b.BROKEN_MODULE_PY) and
         ["nbbroken:Net", "--to", "onnx"], FAILURE, "import-time failure", names="nbbroken"),
    Case("state-dict-wrong-keys", lambda w: [_sd(w), "--to", "onnx", "--model-class",
                                             "torch.nn:Bilinear", "--model-args",
                                             '{"in1_features": 4, "in2_features": 4, '
                                             '"out_features": 3, "bias": false}'],
         FAILURE, "do not fit", "--model-class"),
    Case("state-dict-wrong-shapes", lambda w: [_sd(w), "--to", "onnx", "--model-class",
                                               "torch.nn:Linear", "--model-args",
                                               '{"in_features": 5, "out_features": 3}'],
         FAILURE, "size mismatch", "--model-args"),
    Case("state-dict-without-class", lambda w: [_sd(w), "--to", "onnx"], USAGE,
         "state dict", "--model-class"),
    Case("pickle-payload", lambda w: [b.pickle_payload(w / "model.pt", w / "pwned.txt"), "--to",
                                      "onnx"], FAILURE, "pickled", "--trust-pickle"),
    Case("keras-lambda", lambda w: [b.keras_lambda(w / "model.keras"), "--to", "onnx"], FAILURE,
         "lambda", "--unsafe-keras"),
    Case("h5-lambda", lambda w: [b.keras_lambda(w / "model.h5"), "--to", "onnx"], FAILURE,
         "lambda", "--unsafe-keras"),
    # ---- forward signatures and outputs
    Case("keyword-only-forward", lambda w: _models_py(w) or ["nbmodels:KeywordOnly", "--to",
                                                            "onnx", "--input-shape", "1,4"],
         USAGE, "keyword-only", "positional", names="KeywordOnly"),
    Case("dict-of-non-tensors", lambda w: _models_py(w) or ["nbmodels:DictOfStrings", "--to",
                                                           "onnx", "--input-shape", "1,4"],
         FAILURE, "not tensors", "return tensors", names="DictOfStrings"),
    Case("string-output-torch", lambda w: _models_py(w) or ["nbmodels:StringOut", "--to", "tf",
                                                           "--input-shape", "1,4"],
         FAILURE, "str", "return tensors", names="StringOut"),
    # ---- flags
    Case("shape-wrong-rank", lambda w: [_mlp(w), "--to", "tf", "--input-shape", "1,3,4"], USAGE,
         "rank", "--input-shape"),
    Case("shape-bad-syntax", lambda w: [_mlp(w), "--to", "tf", "--input-shape", "1,x,,"], USAGE,
         "--input-shape", names=None),
    Case("shape-unknown-input-name", lambda w: [_mlp(w), "--to", "tf", "--input-shape",
                                                "nope:1,4"], USAGE, "nope", names=None),
    Case("dtype-unknown", lambda w: [_mlp(w), "--to", "tf", "--dtype", "float33"], USAGE,
         "float33", names=None),
    Case("atol-negative", lambda w: [_mlp(w), "--to", "onnx", "-o", "out.onnx", "--atol", "-1"],
         USAGE, "--atol", ">= 0", names=None),
    Case("opset-out-of-range", lambda w: [_mlp(w), "--to", "onnx", "-o", "out.onnx", "--opset",
                                          "99"], USAGE, "opset", names=None),
    Case("unknown-from", lambda w: [_mlp(w), "--from", "caffe"], USAGE, "caffe", "use one of",
         names=None),
    Case("unknown-target", lambda w: [_mlp(w), "--to", "caffe"], USAGE, "caffe", names=None),
    Case("unknown-option", lambda w: [_mlp(w), "--frobnicate"], USAGE, "--frobnicate",
         "--help", names=None),
    Case("model-args-bad-json", lambda w: [_sd(w), "--to", "onnx", "--model-class",
                                           "torch.nn:Linear", "--model-args", "{in: 4"], USAGE,
         "--model-args", "num_classes", names=None),
    # ---- outputs
    Case("output-folder-missing", lambda w: [_mlp(w), "--to", "onnx", "-o", "nodir/out.onnx"],
         USAGE, "does not exist", "create it", names="nodir"),
    Case("output-folder-is-a-file", lambda w: (w / "afile").write_text("x") and
         [_mlp(w), "--to", "onnx", "-o", "afile/out.onnx"], USAGE, "afile", names="afile"),
    Case("output-not-writable", lambda w: [_mlp(w), "--to", "onnx", "-o",
                                           "/proc/nb-out.onnx"], USAGE, "not writable",
         names="/proc"),
    Case("output-exists", lambda w: (w / "out.onnx").write_text("old") and
         [_mlp(w), "--to", "onnx", "-o", "out.onnx"], USAGE, "already exists", "--force",
         names="out.onnx"),
    Case("output-is-a-folder", lambda w: [_mlp(w), "--to", "onnx", "-o", "."], USAGE,
         "folder", names="."),
    Case("output-suffix-mismatch", lambda w: [_mlp(w), "--to", "torch", "-o", "out.onnx"], USAGE,
         "says onnx", "--to", names="out.onnx"),
    Case("output-is-source", lambda w: [_mlp(w), "--to", "onnx", "-o", "model.onnx", "--force"],
         USAGE, "source itself", names="model.onnx"),
    Case("save-onnx-folder-missing", lambda w: [_sd(w), "--to", "tf", "--model-class",
                                                "torch.nn:Linear", "--model-args",
                                                '{"in_features": 4, "out_features": 3}',
                                                "--save-onnx", "nodir/x.onnx"], USAGE,
         "does not exist", names="nodir"),
    # ---- config files
    Case("config-syntax-error", lambda w: [_mlp(w), "--to", "tf", "-c",
                                           _config(w, "nb.toml", "input_shape = [1, 4\n")],
         USAGE, "cannot parse", names="nb.toml"),
    Case("config-unknown-key", lambda w: [_mlp(w), "--to", "tf", "-c",
                                          _config(w, "nb.yaml", "input_shap: 1,4\n")], USAGE,
         "input_shap", "known keys", names="nb.yaml"),
    Case("config-missing", lambda w: [_mlp(w), "--to", "tf", "-c", "nb.json"], USAGE,
         "not found", names="nb.json"),
    Case("config-bad-value", lambda w: [_mlp(w), "--to", "onnx", "-o", "out.onnx", "-c",
                                        _config(w, "nb.json", '{"atol": "tiny"}')], USAGE,
         "atol", names=None),
]
