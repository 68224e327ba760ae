"""The project's configuration: where each value comes from, and a bad value named with its source."""

from __future__ import annotations

from pathlib import Path

import pytest

from technician_ops.errors import ConfigError, ExitCode
from technician_ops.project import Project, load_project


def _project(tmp_path: Path, toml: str | None = None, **env: str) -> Project:
    (tmp_path / "runbooks").mkdir(exist_ok=True)
    if toml is not None:
        (tmp_path / "technician-ops.toml").write_text(toml)
    return load_project(tmp_path, environ=env)


def test_controller_name_defaults_to_none_and_the_record_names_the_host(tmp_path: Path) -> None:
    import socket

    from technician_ops.engine.origin import controller

    project = _project(tmp_path)
    assert project.controller_name is None and project.sources["controller_name"] == "default"
    assert controller(project.controller_name) == {"name": socket.gethostname(), "host": socket.gethostname()}


def test_controller_name_from_the_file_then_the_environment(tmp_path: Path) -> None:
    project = _project(tmp_path, 'controller_name = "ops-eu-1"\n')
    assert project.controller_name == "ops-eu-1"
    assert project.sources["controller_name"].endswith("technician-ops.toml")
    project = _project(tmp_path, 'controller_name = "ops-eu-1"\n', TECHNICIAN_OPS_CONTROLLER="ci@runner-7")
    assert project.controller_name == "ci@runner-7" and project.sources["controller_name"] == "$TECHNICIAN_OPS_CONTROLLER"


@pytest.mark.parametrize("value", ['"ops\\u001b[2Jeu"', '"a b"', '""""', '"-lead"', '"' + "x" * 65 + '"', "7",
                                   '["a"]'])
def test_a_bad_controller_name_is_a_config_error_naming_its_source(tmp_path: Path, value: str) -> None:
    text = f"controller_name = {value}\n"
    if value == '""""':
        text = 'controller_name = "\\""\n'
    with pytest.raises(ConfigError) as err:
        _project(tmp_path, text)
    assert err.value.exit_code == ExitCode.CONFIG
    assert "technician-ops.toml" in str(err.value) and "controller_name" in str(err.value)
    assert "\x1b" not in str(err.value)


def test_a_bad_controller_name_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\$TECHNICIAN_OPS_CONTROLLER"):
        _project(tmp_path, TECHNICIAN_OPS_CONTROLLER="rm -rf /")


def test_an_empty_environment_value_keeps_the_file_value(tmp_path: Path) -> None:
    assert _project(tmp_path, 'controller_name = "a1"\n', TECHNICIAN_OPS_CONTROLLER="").controller_name == "a1"


def test_an_unknown_key_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting 'controler_name'.*controller_name"):
        _project(tmp_path, 'controler_name = "a"\n')
