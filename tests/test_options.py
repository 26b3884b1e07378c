import pytest

from neuralbridge_cli.cli.params import build_options
from neuralbridge_cli.errors import UsageError


def test_config_files_in_three_syntaxes(tmp_path):
    (tmp_path / "a.toml").write_text('input_shape = ["x:1,3,32,32"]\natol = 0.01\n')
    (tmp_path / "a.yaml").write_text("input-shape: [1, 3, 32, 32]\nopset: 17\n")
    (tmp_path / "a.json").write_text('{"input_shape": {"ids": [1, 16]}, "dtype": "ids:int64"}')
    toml = build_options(config=str(tmp_path / "a.toml"))
    assert toml.input_specs[0].shape == (1, 3, 32, 32) and toml.atol == 0.01
    yaml = build_options(config=str(tmp_path / "a.yaml"))
    assert yaml.input_specs[0].shape == (1, 3, 32, 32) and yaml.opset == 17
    js = build_options(config=str(tmp_path / "a.json"))
    assert js.input_specs[0].name == "ids" and js.input_specs[0].dtype == "int64"


def test_flags_override_config(tmp_path):
    (tmp_path / "c.toml").write_text("atol = 0.01\n")
    assert build_options(config=str(tmp_path / "c.toml"), atol=0.5).atol == 0.5


def test_bad_config_files(tmp_path):
    (tmp_path / "bad.toml").write_text("input_shape = [\n")
    with pytest.raises(UsageError, match="cannot parse"):
        build_options(config=str(tmp_path / "bad.toml"))
    (tmp_path / "unknown.toml").write_text("colour = 'red'\n")
    with pytest.raises(UsageError, match="unknown key"):
        build_options(config=str(tmp_path / "unknown.toml"))


def test_negative_tolerance_and_bad_model_args():
    with pytest.raises(UsageError, match="atol"):
        build_options(atol=-1.0)
    with pytest.raises(UsageError, match="JSON"):
        build_options(model_args="{num_classes: 10}")
