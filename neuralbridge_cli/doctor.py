"""`neuralbridge doctor`: what is installed, which routes work, known incompatibilities.

Everything here reads package metadata (importlib.metadata) and never imports a
framework, so the check is fast and cannot crash on a broken install. The tested
versions are shipped in this module (TESTED_VERSIONS, kept equal to constraints.txt
by tests/test_doctor.py) because constraints.txt is not part of an installed wheel.
"""
from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import platform
import re
import sys
from dataclasses import asdict, dataclass, field

from . import __version__
from .errors import MissingDependencyError, UsageError


@dataclass(frozen=True)
class Package:
    """A package NeuralBridge uses: its module, its distributions, and the extra providing it."""

    name: str
    dists: tuple[str, ...]  # distribution names, first found wins (tensorflow vs tensorflow-cpu)
    extra: str | None  # None: a core dependency (or, with `comes_with`, another package's)
    role: str
    comes_with: str | None = None  # not ours: installed by that package


PACKAGES = {p.name: p for p in (
    Package("torch", ("torch",), "torch", "PyTorch"),
    Package("torchvision", ("torchvision",), "torch", "imported by onnx2torch"),
    Package("onnxscript", ("onnxscript",), "torch", "torch.onnx dynamo exporter"),
    Package("onnx2torch", ("onnx2torch",), "torch", "ONNX -> PyTorch"),
    Package("safetensors", ("safetensors",), "torch", ".safetensors state dicts"),
    Package("tensorflow", ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos"),
            "tensorflow", "TensorFlow"),
    Package("keras", ("keras",), "tensorflow", "Keras 3"),
    Package("tf_keras", ("tf_keras", "tf-keras"), "tensorflow", "needed by onnx2tf"),
    Package("tf2onnx", ("tf2onnx",), "tensorflow", "TensorFlow -> ONNX"),
    Package("onnx2tf", ("onnx2tf",), "tensorflow", "ONNX -> SavedModel fallback"),
    Package("onnx_graphsurgeon", ("onnx_graphsurgeon", "onnx-graphsurgeon"), "tensorflow",
            "imported by onnx2tf"),
    Package("sng4onnx", ("sng4onnx",), "tensorflow", "imported by onnx2tf"),
    Package("psutil", ("psutil",), "tensorflow", "imported by onnx2tf"),
    Package("ai_edge_litert", ("ai-edge-litert", "ai_edge_litert"), "tensorflow",
            "TFLite interpreter"),
    Package("onnxsim", ("onnxsim",), "tensorflow", "graph simplifier for onnx2tf"),
    Package("h5py", ("h5py",), "tensorflow", ".h5 files"),
    Package("onnx", ("onnx",), None, "ONNX"),
    Package("onnxruntime", ("onnxruntime", "onnxruntime-gpu"), None, "runs ONNX models"),
    Package("numpy", ("numpy",), None, "arrays"),
    Package("protobuf", ("protobuf",), None, "used by onnx, TensorFlow"),
    Package("triton", ("triton",), None, "GPU kernels", comes_with="torch (CUDA build)"),
    Package("typer", ("typer",), None, "command line"),
    Package("rich", ("rich",), None, "terminal output"),
)}

# Versions tested together (constraints.txt, Python 3.11). A version outside the same
# major.minor series is reported as untested; protobuf and numpy by major version.
TESTED_VERSIONS = {
    "torch": "2.14.1", "torchvision": "0.29.1", "onnxscript": "0.7.2", "onnx2torch": "1.5.15",
    "tensorflow": "2.21.0", "keras": "3.15.1", "tf_keras": "2.21.0", "tf2onnx": "1.17.0",
    "onnx2tf": "1.28.8", "onnx": "1.23.2", "onnxruntime": "1.32.0", "protobuf": "7.36.2",
    "numpy": "2.4.6",
}
SAME_MAJOR_ONLY = {"protobuf", "numpy"}
TESTED_PYTHON = (3, 11)

# What a model of each framework needs to be loaded and run (the source and the result).
FRAMEWORK_NEEDS = {"torch": ("torch",), "tf": ("tensorflow", "keras"),
                   "onnx": ("onnx", "onnxruntime")}
# Export to ONNX: (required, used when present for more fallbacks).
TO_ONNX = {"torch": (("onnx",), ("onnxscript",)),
           "tf": (("tf2onnx", "onnx"), ())}
ONNX2TF = ("onnx2tf", "tf_keras", "onnx_graphsurgeon", "sng4onnx", "psutil", "onnxsim")
# Import from ONNX, per target.
FROM_ONNX = {
    "torch": (("onnx2torch", "torchvision"), ()),
    "torchscript": (("onnx2torch", "torchvision"), ()),
    "tf": ((), ONNX2TF),
    "keras": ((), ()),
    "h5": (("h5py",), ()),
    "tflite": ((), ONNX2TF + ("ai_edge_litert",)),
}
SOURCE_ALIASES = {"pytorch": "torch", "torch": "torch", "tf": "tf", "tensorflow": "tf",
                  "keras": "tf", "savedmodel": "tf", "h5": "tf", "tflite": "tf", "onnx": "onnx"}
TARGET_ALIASES = {"pytorch": "torch", "tensorflow": "tf", "savedmodel": "tf"}


@dataclass
class Installed:
    name: str
    version: str | None  # None: not installed
    dist: str | None
    extra: str | None
    role: str
    comes_with: str | None = None

    @property
    def present(self) -> bool:
        return self.version is not None


@dataclass
class Route:
    source: str
    target: str
    status: str  # ok | partial (fewer fallback strategies) | missing
    missing: list[str] = field(default_factory=list)
    optional_missing: list[str] = field(default_factory=list)
    fix: str | None = None

    @property
    def available(self) -> bool:
        return self.status != "missing"


@dataclass
class Issue:
    id: str
    severity: str  # error | warning | info
    message: str
    fix: str | None = None


@dataclass
class DoctorReport:
    neuralbridge: str
    python: str
    platform: str
    packages: list[Installed]
    routes: list[Route]
    issues: list[Issue]

    def route(self, source: str, target: str) -> Route:
        return next(r for r in self.routes if (r.source, r.target) == (source, target))

    def as_dict(self) -> dict:
        return asdict(self)


def installed_version(package: Package) -> tuple[str | None, str | None]:
    """(version, distribution) from metadata; a module found without metadata is 'unknown'."""
    for dist in package.dists:
        try:
            return metadata.version(dist), dist
        except metadata.PackageNotFoundError:
            continue
    try:
        found = importlib.util.find_spec(package.name) is not None  # imports nothing
    except (ImportError, ValueError):
        found = False
    return ("unknown", None) if found else (None, None)


def scan_packages() -> dict[str, Installed]:
    result = {}
    for pkg in PACKAGES.values():
        version, dist = installed_version(pkg)
        result[pkg.name] = Installed(pkg.name, version, dist, pkg.extra, pkg.role, pkg.comes_with)
    return result


def install_hint(names) -> str:
    """The pip command that installs the given packages: the extras providing them."""
    extras = sorted({PACKAGES[n].extra for n in names if PACKAGES[n].extra})
    if not extras:
        return "pip install --force-reinstall neuralbridge-cli"
    joined = "all" if extras == ["tensorflow", "torch"] else ",".join(extras)
    return f"pip install 'neuralbridge-cli[{joined}]'"


def route_needs(source: str, target_name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) packages of converting a `source` framework model to a target."""
    from .pipeline import TARGETS  # light: the backends are imported on use only

    target = TARGETS[target_name]
    required = list(FRAMEWORK_NEEDS[source]) + list(FRAMEWORK_NEEDS[target.framework])
    optional: list[str] = []
    if source != target.framework or target.name == "onnx":
        if source != "onnx":
            required += TO_ONNX[source][0]
            optional += TO_ONNX[source][1]
        if target.name != "onnx":
            required += FROM_ONNX[target.name][0]
            optional += FROM_ONNX[target.name][1]
    elif target.name == "h5":
        required += ["h5py"]
    return tuple(dict.fromkeys(required)), tuple(dict.fromkeys(optional))


def check_route(source: str, target: str, packages: dict[str, Installed]) -> Route:
    required, optional = route_needs(source, target)
    missing = [n for n in required if not packages[n].present]
    optional_missing = [n for n in optional if not packages[n].present]
    status = "missing" if missing else "partial" if optional_missing else "ok"
    fix = install_hint(missing + optional_missing) if status != "ok" else None
    return Route(source, target, status, missing, optional_missing, fix)


def require_route(source: str, target: str) -> None:
    """Fail fast, before any conversion work, when a package the route needs is missing."""
    missing = [n for n in route_needs(source, target)[0]
               if installed_version(PACKAGES[n])[0] is None]
    if missing:
        raise MissingDependencyError(
            f"converting {source} to {target} needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed", hint=install_hint(missing))


def parse_route(text: str) -> tuple[str, str]:
    """`torch:tf` -> ("torch", "tf"); source aliases like keras/tflite mean TensorFlow."""
    from .pipeline import TARGETS

    source, sep, target = text.strip().lower().partition(":")
    target = TARGET_ALIASES.get(target, target)
    if not sep or source not in SOURCE_ALIASES or target not in TARGETS:
        raise UsageError(f"bad route {text!r}",
                         hint=f"write SOURCE:TARGET, SOURCE one of torch, tf, keras, onnx; "
                              f"TARGET one of {', '.join(TARGETS)} (e.g. --route torch:tf)")
    return SOURCE_ALIASES[source], target


def _series(version: str, parts: int) -> tuple[int, ...]:
    numbers = [int(n) for n in re.findall(r"\d+", version.split("+")[0])[:parts]]
    return tuple(numbers)


def find_issues(packages: dict[str, Installed]) -> list[Issue]:
    """Known incompatibilities and untested versions in this environment."""
    issues: list[Issue] = []
    have = {n: p.version for n, p in packages.items() if p.present and p.version != "unknown"}
    if sys.version_info[:2] != TESTED_PYTHON:
        issues.append(Issue("python-untested", "info",
                            f"Python {platform.python_version()}: the tested stack is on "
                            f"Python {'.'.join(map(str, TESTED_PYTHON))}"))
    for name, tested in TESTED_VERSIONS.items():
        if name not in have:
            continue
        parts = 1 if name in SAME_MAJOR_ONLY else 2
        if _series(have[name], parts) != _series(tested, parts):
            series = ".".join(map(str, _series(tested, parts))) + ".x"
            issues.append(Issue(f"{name}-untested", "warning",
                                f"{name} {have[name]} is outside the tested range ({series}; "
                                f"tested {tested})",
                                f"pip install '{name}=={tested}' (or install with the "
                                f"constraints file)"))
    if "torch" in have and "torchvision" in have:
        # torchvision 0.N pairs with torch 2.(N-15): 0.29 <-> 2.14, 0.21 <-> 2.6
        torch_minor, vision_minor = _series(have["torch"], 2), _series(have["torchvision"], 2)
        if len(torch_minor) == 2 and len(vision_minor) == 2 and \
                vision_minor[1] - 15 != torch_minor[1]:
            issues.append(Issue("torchvision-mismatch", "error",
                                f"torchvision {have['torchvision']} does not match torch "
                                f"{have['torch']} (import fails with errors like "
                                f"'operator torchvision::nms does not exist')",
                                f"pip install 'torchvision==0.{torch_minor[1] + 15}.*'"))
    if "tensorflow" in have and "tf_keras" in have and \
            _series(have["tensorflow"], 2) != _series(have["tf_keras"], 2):
        issues.append(Issue("tf-keras-mismatch", "error",
                            f"tf_keras {have['tf_keras']} does not match TensorFlow "
                            f"{have['tensorflow']}",
                            f"pip install 'tf_keras=={have['tensorflow']}'"))
    if "keras" in have and _series(have["keras"], 1) < (3,):
        issues.append(Issue("keras-2", "error", f"keras {have['keras']}: NeuralBridge needs "
                            "Keras 3", "pip install 'keras>=3'"))
    if "onnx2tf" in have:
        undeclared = [n for n in ("onnx_graphsurgeon", "sng4onnx", "psutil", "ai_edge_litert")
                      if not packages[n].present]
        if undeclared:
            issues.append(Issue("onnx2tf-undeclared-deps", "warning",
                                f"onnx2tf imports {', '.join(undeclared)} without declaring "
                                f"them: its fallback strategies will fail",
                                install_hint(undeclared)))
    if "triton" in have and "tensorflow" in have:
        issues.append(Issue("triton-after-tensorflow", "info",
                            "triton (CUDA build of torch) crashes the process when loaded "
                            "after TensorFlow; handled: NeuralBridge imports triton first, "
                            "and keeps it out if your code imported TensorFlow before torch"))
    return issues


def diagnose() -> DoctorReport:
    """Scan the environment: packages, every source x target route, known issues."""
    from .pipeline import TARGETS

    packages = scan_packages()
    routes = [check_route(source, target, packages)
              for source in ("torch", "tf", "onnx") for target in TARGETS]
    return DoctorReport(
        neuralbridge=__version__,
        python=f"{platform.python_version()} ({sys.executable})",
        platform=f"{platform.system().lower()} {platform.machine()}",
        packages=list(packages.values()),
        routes=routes,
        issues=find_issues(packages),
    )
