"""`ccaa up` hands the services the config file the CLI read, whether it came from
--config or $CCAA_CONFIG."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.config import load_config
from services.cli.stack import stack_env


def test_ccaa_config_variable_reaches_the_services_as_an_absolute_path(tmp_path, monkeypatch):
    config = tmp_path / "ccaa.toml"
    config.write_text("[agent_hierarchy.worker]\ncount = 0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CCAA_CONFIG", "ccaa.toml")
    cli_view = load_config(None)  # what the CLI itself read
    env = stack_env(cli_view, None, {})
    assert env["CCAA_CONFIG"] == str(config)
    # and the services, started elsewhere, read that same file
    monkeypatch.chdir("/")
    assert load_config(None, environ=env).agent_hierarchy["worker"].count == 0


@pytest.mark.parametrize("given", ["flag", "both"])
def test_config_flag_wins_over_the_variable(tmp_path, monkeypatch, given):
    flag = tmp_path / "flag.toml"
    flag.write_text("")
    monkeypatch.setenv("CCAA_CONFIG", str(tmp_path / "other.toml") if given == "both" else "")
    env = stack_env(load_config(str(flag)), str(flag), {})
    assert Path(env["CCAA_CONFIG"]) == flag


def test_no_config_anywhere_means_defaults(monkeypatch):
    monkeypatch.delenv("CCAA_CONFIG", raising=False)
    assert stack_env(load_config(None), None, {})["CCAA_CONFIG"] == ""
