"""Batch building blocks without frameworks: discovery, settings, shards, output names, records,
reports."""
from __future__ import annotations

import json
from xml.etree import ElementTree as ET

import pytest

from neuralbridge_cli.batch import manifest
from neuralbridge_cli.batch.discovery import discover, is_batch_source
from neuralbridge_cli.batch.reports import BatchReport, ModelResult, junit_xml
from neuralbridge_cli.batch.runner import output_paths
from neuralbridge_cli.batch.shard import in_shard, parse_shard, shard_of
from neuralbridge_cli.batch.workers import BASE_MODULES, Pool, Task, preload_modules
from neuralbridge_cli.errors import UsageError


def touch(path, data=b"\x08\x07 bytes"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "models"
    touch(root / "a.onnx")
    touch(root / "b.keras")
    touch(root / "sub" / "c.pt")
    touch(root / "sub" / "deep" / "d.onnx")
    touch(root / "notes.txt")  # not a model
    touch(root / ".nbtmp-1234-e.onnx")  # a partial output: hidden, skipped
    saved = root / "sm.savedmodel"
    touch(saved / "saved_model.pb")
    touch(saved / "variables" / "variables.index")  # must not be walked into
    return root


def test_discovery_finds_files_and_savedmodels_as_one_model(tree):
    found = [m.relative for m in discover(tree)]
    assert found == ["a.onnx", "b.keras", "sm.savedmodel", "sub/c.pt", "sub/deep/d.onnx"]
    assert is_batch_source(str(tree)) and not is_batch_source(str(tree / "sm.savedmodel"))


def test_include_and_exclude_globs(tree):
    assert [m.relative for m in discover(tree, include=["*.onnx"])] == ["a.onnx", "sub/deep/d.onnx"]
    assert [m.relative for m in discover(tree, exclude=["sub/*", "*.keras"])] == \
        ["a.onnx", "sm.savedmodel"]


def test_output_folder_inside_the_source_is_not_walked(tree):
    touch(tree / "out" / "a.onnx")
    assert "out/a.onnx" not in [m.relative for m in discover(tree, skip=[tree / "out"])]


def test_neuralbridge_toml_settings_nearest_wins(tree):
    (tree / "neuralbridge.toml").write_text('input_shape = "1,3,32,32"\natol = 0.01\n')
    (tree / "sub" / "neuralbridge.toml").write_text(
        'atol = 0.5\n["c.pt"]\nmodel-class = "torchvision.models:resnet18"\n'
        '["deep/*.onnx"]\nrtol = 0.2\n')
    settings = {m.relative: m.settings for m in discover(tree)}
    assert settings["a.onnx"] == {"input_shape": "1,3,32,32", "atol": 0.01}
    assert settings["sub/c.pt"] == {"input_shape": "1,3,32,32", "atol": 0.5,
                                    "model_class": "torchvision.models:resnet18"}
    assert settings["sub/deep/d.onnx"] == {"input_shape": "1,3,32,32", "atol": 0.5, "rtol": 0.2}


def test_neuralbridge_toml_unknown_key_is_a_usage_error(tree):
    (tree / "neuralbridge.toml").write_text("input_shap = '1,3'\n")
    with pytest.raises(UsageError, match="input_shap"):
        discover(tree)


def test_undetectable_model_is_kept_with_its_reason(tmp_path):
    touch(tmp_path / "empty.onnx", b"")
    [model] = discover(tmp_path)
    assert model.format is None and "empty file" in model.error


def test_shards_cover_every_model_exactly_once_and_are_stable():
    paths = [f"dir{i % 7}/model_{i}.onnx" for i in range(300)]
    owners = {p: [k for k in range(3) if in_shard(p, (k, 3))] for p in paths}
    assert all(len(k) == 1 for k in owners.values())
    sizes = [sum(1 for k in owners.values() if k == [s]) for s in range(3)]
    assert min(sizes) > 60, sizes  # roughly even
    # adding files does not move existing ones
    assert [shard_of(p, 3) for p in paths] == [shard_of(p, 3) for p in paths + ["new.onnx"]][:300]


@pytest.mark.parametrize("text,expected", [("0/3", (0, 3)), ("2/3", (2, 3)), ("3/3", (0, 3)),
                                           (" 1 / 4 ", (1, 4))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["3", "4/3", "1/0", "a/b", "-1/3"])
def test_parse_shard_rejects(text):
    with pytest.raises(UsageError):
        parse_shard(text)


def test_output_paths_mirror_the_tree_and_resolve_collisions(tree):
    touch(tree / "a.keras")
    models = discover(tree)
    for m in models:
        m.framework = m.framework or "onnx"
    outputs = {k: v.relative_to(tree.parent / "out").as_posix()
               for k, v in output_paths(models, tree.parent / "out", "tf").items()}
    assert outputs["sub/deep/d.onnx"] == "sub/deep/d.savedmodel"
    assert outputs["sm.savedmodel"] == "sm.savedmodel"
    assert outputs["a.onnx"] == "a.onnx.savedmodel" and outputs["a.keras"] == "a.keras.savedmodel"


def test_record_matches_only_the_same_source_and_settings(tmp_path):
    source = touch(tmp_path / "m.onnx", b"one")
    output = touch(tmp_path / "out" / "m.onnx", b"converted")
    digest, key = manifest.source_hash(source), manifest.settings_key("onnx", {"atol": 1e-4})
    assert manifest.is_up_to_date(output, digest, key) is None  # no record yet
    manifest.write_record(output, {"source_sha256": digest, "settings": key, "output": "m.onnx"})
    assert manifest.is_up_to_date(output, digest, key)
    assert not manifest.is_up_to_date(output, manifest.source_hash(touch(source, b"two")), key)
    assert not manifest.is_up_to_date(output, digest, manifest.settings_key("tf", {}))
    output.unlink()
    assert not manifest.is_up_to_date(output, digest, key)


def test_junit_and_json_reports():
    report = BatchReport("models", "out", "onnx", 2, None, seconds=3.5, discovered=3, results=[
        ModelResult("a.onnx", "models/a.onnx", "out/a.onnx", "ok", route=["onnx", "onnx"],
                    max_abs_error=1e-7, max_rel_error=1e-6, seconds=1.25),
        ModelResult("b.onnx", "models/b.onnx", None, "failed", error="bad <file> & co"),
        ModelResult("c.onnx", "models/c.onnx", "out/c.onnx", "skipped"),
    ])
    suite = ET.fromstring(junit_xml(report)).find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["b.onnx"].find("failure").get("message") == "bad <file> & co"
    assert cases["c.onnx"].find("skipped") is not None
    assert cases["a.onnx"].get("time") == "1.250"
    data = json.loads(json.dumps(report.as_dict()))
    assert data["counts"]["failed"] == 1 and data["ok"] is False and report.exit_code == 1


class _FakeWorker:
    """Stands in for a worker process handle in scheduling tests: only what _pick reads."""

    def __init__(self, loaded):
        self.loaded = set(BASE_MODULES) | set(loaded)

    def holds(self, task):
        return self.loaded.issuperset(task.preload)


def _task(index, frameworks, cost=8.0):
    return Task(index, f"m{index}", "s", "o", "onnx", None,
                preload=preload_modules(set(frameworks), "onnx"), cost=cost)


def _pick(worker, others, pending):
    pool = Pool(2, BASE_MODULES)
    pool.workers = [worker, *others]
    return pool._pick(worker, pending)


def test_a_free_worker_takes_what_no_other_worker_holds_before_importing_a_second_framework():
    torch_tasks = [_task(i, {"torch"}, cost=1.0) for i in range(3)]
    keras = _task(3, {"tf"}, cost=0.5)
    onnx_only = _task(4, set(), cost=0.2)
    holder, fresh = _FakeWorker(torch_tasks[0].preload), _FakeWorker([])
    # priority order is kept for the worker that holds torch
    assert _pick(holder, [fresh], torch_tasks + [keras]) == 0
    # 3 s of torch work is not worth a second torch import: the fresh worker takes Keras
    assert _pick(fresh, [holder], torch_tasks + [keras, onnx_only]) == 3
    # an ONNX-only model fits any worker
    assert _pick(fresh, [holder], torch_tasks[:1] + [onnx_only]) == 1
    # nothing it should take: it waits
    assert _pick(fresh, [holder], torch_tasks) is None


def test_a_worker_imports_another_workers_framework_when_enough_work_waits():
    holder, fresh = _FakeWorker(preload_modules({"torch"}, "onnx")), _FakeWorker([])
    many = [_task(i, {"torch"}, cost=3.0) for i in range(4)] + [_task(4, {"tf"}, cost=0.5)]
    assert _pick(fresh, [holder], many) == 0  # 12 s waits for torch: import it, longest first
