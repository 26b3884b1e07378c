"""The shipped CI templates and Makefile example: they parse, and the commands they run work."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import yaml

import models

REPO = Path(__file__).resolve().parents[2]
GITLAB = REPO / "ci" / "gitlab" / "neuralbridge.gitlab-ci.yml"
GITHUB = REPO / "ci" / "github" / "neuralbridge.yml"
MAKEFILE = REPO / "examples" / "Makefile.batch"
NEURALBRIDGE = [sys.executable, "-m", "neuralbridge_cli"]


def env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}


def expand(text: str, variables: dict) -> str:
    """Shell/GitLab `${VAR:-default}`, `${VAR}`, `$VAR` and GitHub `${{ ctx.name }}`."""
    text = re.sub(r"\$\{\{\s*(?:matrix|env)\.(\w+)\s*\}\}", lambda m: str(variables[m.group(1)]), text)
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: str(variables.get(m.group(1), m.group(2))), text)
    text = re.sub(r"\$\{(\w+)\}", lambda m: str(variables[m.group(1)]), text)
    return re.sub(r"\$(\w+)", lambda m: str(variables[m.group(1)]), text)


def neuralbridge_commands(lines: list[str], variables: dict) -> list[list[str]]:
    commands = [shlex.split(expand(line, variables)) for line in lines
                if line.strip().startswith("neuralbridge ")]
    assert commands, lines
    return [NEURALBRIDGE + c[1:] for c in commands]


@pytest.fixture
def tiny_models(workdir):
    for i in range(3):
        models.onnx_mlp(workdir / "models" / f"sub{i % 2}" / f"m{i}.onnx", sizes=(6, 3), seed=i)
    return workdir


def test_gitlab_template_runs_its_shards(tiny_models):
    config = yaml.safe_load(GITLAB.read_text())
    job = config["neuralbridge-convert"]
    assert isinstance(job["parallel"], int) and job["parallel"] >= 2
    assert job["artifacts"]["reports"]["junit"] == "neuralbridge-*.xml"
    assert job["artifacts"]["when"] == "always"
    variables = {**config["variables"], "NEURALBRIDGE_TARGET": "onnx", "CI_PROJECT_DIR": "."}
    seen = []
    for index in range(1, job["parallel"] + 1):  # GitLab's CI_NODE_INDEX is 1-based
        [command] = neuralbridge_commands(job["script"], {**variables, "CI_NODE_INDEX": index,
                                                          "CI_NODE_TOTAL": job["parallel"]})
        assert "--shard" in command and "--junit" in command
        proc = subprocess.run(command, cwd=tiny_models, env=env(), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        report = json.loads((tiny_models / f"neuralbridge-{index}.json").read_text())
        seen += [m["model"] for m in report["models"]]
        ET.parse(tiny_models / f"neuralbridge-{index}.xml")
    assert sorted(seen) == ["sub0/m0.onnx", "sub0/m2.onnx", "sub1/m1.onnx"]
    assert len(list((tiny_models / variables["NEURALBRIDGE_OUT"]).rglob("*.onnx"))) == 3


def test_github_workflow_runs_a_matrix_shard(tiny_models):
    workflow = yaml.safe_load(GITHUB.read_text())
    job = workflow["jobs"]["convert"]
    shards = job["strategy"]["matrix"]["shard"]
    assert len(shards) == int(workflow["env"]["SHARDS"])
    uses = [step.get("uses", "") for step in job["steps"]]
    assert any(u.startswith("actions/upload-artifact") for u in uses)
    runs = [step["run"] for step in job["steps"] if "run" in step]
    variables = {**workflow["env"], "TARGET": "onnx", "shard": shards[0]}
    [command] = neuralbridge_commands(runs, variables)
    proc = subprocess.run(command, cwd=tiny_models, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    suite = ET.parse(tiny_models / f"report-{shards[0]}.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_makefile_example_converts_a_folder_with_make_j(tiny_models):
    args = ["make", "-f", str(MAKEFILE), "-j2", "TARGET=onnx", "SUFFIX=onnx",
            f"NEURALBRIDGE={shlex.join(NEURALBRIDGE)}"]
    # run as a top-level make even when the suite itself runs under `make test`
    make_env = {k: v for k, v in env().items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    proc = subprocess.run(args, cwd=tiny_models, env=make_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outputs = sorted(p.relative_to(tiny_models / "out").as_posix()
                     for p in (tiny_models / "out").rglob("*.onnx"))
    assert outputs == ["sub0/m0.onnx", "sub0/m2.onnx", "sub1/m1.onnx"]
    again = subprocess.run(args, cwd=tiny_models, env=make_env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert " convert " not in again.stdout  # no rule ran: nothing left to do
    assert "Nothing to be done" in again.stdout
    assert "out/%.savedmodel: models/%.onnx" in MAKEFILE.read_text()
