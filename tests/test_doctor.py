"""doctor: package scan, route requirements, known incompatibilities (metadata only)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from neuralbridge_cli import doctor
from neuralbridge_cli.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def fake_env(**versions) -> dict[str, doctor.Installed]:
    """An environment where only `versions` are installed (names as in doctor.PACKAGES)."""
    return {name: doctor.Installed(name, versions.get(name), name, pkg.extra, pkg.role)
            for name, pkg in doctor.PACKAGES.items()}


FULL = {name: version for name, version in doctor.TESTED_VERSIONS.items()}
FULL.update(safetensors="0.8.0", onnx_graphsurgeon="0.6.1", sng4onnx="2.0.1", psutil="7.2.2",
            ai_edge_litert="2.3.0", onnxsim="0.8.1", h5py="3.14.0", typer="0.29.2",
            rich="15.0.0")


def test_tested_versions_match_constraints():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(),
                           re.M))
    pins = {k.lower().replace("-", "_"): v for k, v in pins.items()}
    for name, version in doctor.TESTED_VERSIONS.items():
        assert pins[name] == version, name


def test_this_environment_has_every_route():
    report = doctor.diagnose()
    assert len(report.routes) == 3 * 7
    assert {r.status for r in report.routes} == {"ok"}
    torch = next(p for p in report.packages if p.name == "torch")
    assert torch.version and torch.version[0].isdigit()


def test_route_needs():
    required, optional = doctor.route_needs("torch", "tf")
    assert {"torch", "tensorflow", "keras", "onnx"} <= set(required)
    assert "onnx2torch" not in required and "onnx2tf" in optional
    assert doctor.route_needs("torch", "torchscript") == (("torch",), ())
    required, _ = doctor.route_needs("tf", "torch")
    assert {"tf2onnx", "onnx2torch", "torchvision"} <= set(required)


def test_without_torch_routes_name_the_extra():
    env = fake_env(**{k: v for k, v in FULL.items()
                      if k not in ("torch", "torchvision", "onnxscript", "onnx2torch",
                                   "safetensors")})
    route = doctor.check_route("tf", "torch", env)
    assert route.status == "missing" and route.missing == ["torch", "onnx2torch", "torchvision"]
    assert route.fix == "pip install 'neuralbridge-cli[torch]'"
    assert doctor.check_route("tf", "tflite", env).status == "ok"
    assert doctor.check_route("onnx", "tf", env).status == "ok"


def test_missing_onnx2tf_is_partial():
    env = fake_env(**{k: v for k, v in FULL.items() if k != "onnx2tf"})
    route = doctor.check_route("onnx", "tf", env)
    assert route.status == "partial" and route.optional_missing == ["onnx2tf"]
    assert route.fix == "pip install 'neuralbridge-cli[tensorflow]'"


def test_both_extras_missing_names_all():
    env = fake_env(onnx="1.23.2", onnxruntime="1.32.0")
    assert doctor.check_route("torch", "tf", env).fix == "pip install 'neuralbridge-cli[all]'"
    assert doctor.check_route("onnx", "onnx", env).status == "ok"


def test_known_incompatibilities():
    env = fake_env(**{**FULL, "protobuf": "4.25.5", "torchvision": "0.28.0", "tf_keras": "2.19.0",
                      "onnx2tf": "1.29.1", "triton": "3.8.0", "psutil": None})
    issues = {i.id: i for i in doctor.find_issues(env)}
    assert issues["protobuf-untested"].severity == "warning"
    assert "7.x" in issues["protobuf-untested"].message
    assert issues["torchvision-mismatch"].fix == "pip install 'torchvision==0.29.*'"
    assert issues["tf-keras-mismatch"].severity == "error"
    assert "onnx2tf-untested" in issues
    assert "psutil" in issues["onnx2tf-undeclared-deps"].message
    assert issues["triton-after-tensorflow"].severity == "info"
    assert "handled" in issues["triton-after-tensorflow"].message
    assert {i.id for i in doctor.find_issues(fake_env(**FULL))} <= {"python-untested"}


@pytest.mark.parametrize("text,expected", [("torch:tf", ("torch", "tf")),
                                           ("keras:torch", ("tf", "torch")),
                                           ("PyTorch:TensorFlow", ("torch", "tf")),
                                           ("onnx:tflite", ("onnx", "tflite"))])
def test_parse_route(text, expected):
    assert doctor.parse_route(text) == expected


@pytest.mark.parametrize("text", ["torch", "torch:caffe", "mxnet:onnx"])
def test_parse_route_rejects(text):
    with pytest.raises(UsageError):
        doctor.parse_route(text)


def test_require_route_passes_here_and_names_the_extra(monkeypatch):
    doctor.require_route("torch", "tf")  # everything is installed in the test venv
    real = doctor.installed_version
    monkeypatch.setattr(doctor, "installed_version",  # as if torch were uninstalled
                        lambda pkg: (None, None) if pkg.name == "torch" else real(pkg))
    from neuralbridge_cli.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError) as info:
        doctor.require_route("tf", "torch")
    assert "needs torch" in str(info.value)
    assert info.value.hint == "pip install 'neuralbridge-cli[torch]'"
    doctor.require_route("tf", "onnx")
