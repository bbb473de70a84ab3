"""Configuration: defaults < TOML file < CCAA_* environment < flags, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.config import (
    ConfigError,
    RoleConfig,
    SystemConfig,
    env_overrides,
    flag_overrides,
    load_config,
)
from libs.runner import common_parser, config_from_args

pytestmark = pytest.mark.timeout(30)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ccaa.toml"
    path.write_text(text)
    return path


# ---- defaults ---------------------------------------------------------------------------


def test_defaults_without_file_env_or_flags():
    cfg = load_config(environ={})
    assert cfg == SystemConfig()
    assert cfg.communication.hub_port == 5555
    assert cfg.communication.router() == "tcp://127.0.0.1:5555"
    assert cfg.communication.pub() == "tcp://127.0.0.1:5556"
    assert cfg.communication.sub() == "tcp://127.0.0.1:5557"
    assert cfg.communication.heartbeat_interval == 1.0 and cfg.communication.liveness == 3
    assert cfg.orchestrator.max_parallel_tasks == 4
    assert cfg.orchestrator.retry_attempts == 2 and cfg.orchestrator.retry_backoff == 1.0
    assert cfg.distribution.strategy == "load_balanced"
    assert set(cfg.agent_hierarchy) == {"architect", "manager", "worker", "utility"}
    assert cfg.agent_hierarchy["worker"].count == 2
    assert cfg.agent_hierarchy["architect"].model == "opus"
    assert cfg.agent_hierarchy["worker"].command == ["bash", "-c", "{prompt}"]
    assert cfg.data_path() == Path("~/.ccaa").expanduser()


def test_default_mutable_values_are_not_shared_between_configs():
    a, b = load_config(environ={}), load_config(environ={})
    a.agent_hierarchy["worker"].command.append("x")
    a.metrics.ports["hub"] = 1
    assert b.agent_hierarchy["worker"].command == ["bash", "-c", "{prompt}"]
    assert b.metrics.ports["hub"] == 9450


def test_explicit_endpoints_override_host_and_port():
    cfg = load_config(environ={}, overrides={"communication": {
        "router_endpoint": "ipc:///tmp/r", "hub_host": "10.0.0.5", "pub_port": 7000}})
    assert cfg.communication.router() == "ipc:///tmp/r"
    assert cfg.communication.pub() == "tcp://10.0.0.5:7000"


# ---- file -------------------------------------------------------------------------------


def test_toml_file_sets_values(tmp_path):
    path = _toml(tmp_path, """
data_dir = "/srv/ccaa"
[communication]
hub_port = 6000
heartbeat_interval = 0.5
[distribution]
strategy = "round_robin"
[metrics.ports]
hub = 0
""")
    cfg = load_config(path, environ={})
    assert cfg.data_dir == "/srv/ccaa"
    assert cfg.communication.hub_port == 6000
    assert cfg.communication.heartbeat_interval == 0.5
    assert cfg.communication.liveness == 3  # untouched keys keep defaults
    assert cfg.distribution.strategy == "round_robin"
    assert cfg.metrics.ports == {"hub": 0}


def test_config_file_from_ccaa_config_variable(tmp_path):
    path = _toml(tmp_path, "[communication]\nhub_port = 6100\n")
    assert load_config(environ={"CCAA_CONFIG": str(path)}).communication.hub_port == 6100
    # an explicit path wins over the variable
    other = tmp_path / "other.toml"
    other.write_text("[communication]\nhub_port = 6200\n")
    cfg = load_config(other, environ={"CCAA_CONFIG": str(path)})
    assert cfg.communication.hub_port == 6200


def test_missing_file_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(missing, environ={})
    assert str(missing) in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(environ={"CCAA_CONFIG": str(missing)})


def test_bad_toml_is_a_config_error_naming_the_file(tmp_path):
    path = _toml(tmp_path, "[communication\nhub_port = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


@pytest.mark.parametrize("make", ["directory", "binary"])
def test_unreadable_config_file_is_a_config_error(tmp_path, make):
    # a directory given by mistake, or a file that is not UTF-8 text: the user must get a
    # ConfigError naming the file, not a traceback (IsADirectoryError / UnicodeDecodeError)
    path = tmp_path / "ccaa.toml"
    if make == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"\xff\xfe[communication]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text, where", [
    ('[communication]\nhub_port = "abc"\n', "communication.hub_port"),
    ("[communication]\nhub_port = 70000\n", "communication.hub_port"),
    ("[communication]\nheartbeat_interval = 0\n", "communication.heartbeat_interval"),
    ('[distribution]\nstrategy = "random"\n', "distribution.strategy"),
    ("[orchestrator]\nmax_parallel_tasks = 0\n", "orchestrator.max_parallel_tasks"),
    ("[communication]\nhub_prot = 1\n", "communication.hub_prot"),
    ("[bogus]\nx = 1\n", "bogus"),
    ('[agent_hierarchy.worker]\nexecutor = "gpt"\n', "agent_hierarchy.worker.executor"),
    ("[agent_hierarchy.worker]\ncommand = 5\n", "agent_hierarchy.worker.command"),
])
def test_wrong_types_and_values_are_config_errors_naming_the_setting(tmp_path, text, where):
    with pytest.raises(ConfigError) as info:
        load_config(_toml(tmp_path, text), environ={})
    assert where in str(info.value)
    assert str(info.value).startswith("invalid configuration")


# ---- environment ------------------------------------------------------------------------


def test_env_overrides_parse_numbers_bools_and_arrays():
    env = {
        "CCAA_COMMUNICATION__HUB_PORT": "6001",
        "CCAA_COMMUNICATION__HEARTBEAT_INTERVAL": "0.25",
        "CCAA_ORCHESTRATOR__ISOLATE_WORKTREES": "false",
        "CCAA_REPORTING__REAL_TIME_UPDATES": "false",
        "CCAA_AGENT_HIERARCHY__WORKER__CAPABILITIES": '["python", "git"]',
        "CCAA_AGENT_HIERARCHY__WORKER__COUNT": "3",
    }
    cfg = load_config(environ=env)
    assert cfg.communication.hub_port == 6001
    assert cfg.communication.heartbeat_interval == 0.25
    assert cfg.orchestrator.isolate_worktrees is False
    assert cfg.reporting.real_time_updates is False
    assert cfg.agent_hierarchy["worker"].capabilities == ["python", "git"]
    assert cfg.agent_hierarchy["worker"].count == 3


def test_env_override_names_map_to_nested_setting_paths():
    tree = env_overrides({"CCAA_COMMUNICATION__HUB_PORT": "6001",
                          "CCAA_communication__liveness": "4",
                          "CCAA_AGENT_HIERARCHY__WORKER__COMMAND": '["sh", "-c", "{prompt}"]',
                          "CCAA_DATA_DIR": "/var/lib/ccaa data"})
    assert set(tree) == {"communication", "agent_hierarchy", "data_dir"}
    assert set(tree["communication"]) == {"hub_port", "liveness"}
    assert tree["agent_hierarchy"] == {"worker": {"command": ["sh", "-c", "{prompt}"]}}
    assert tree["data_dir"] == "/var/lib/ccaa data"
    cfg = load_config(environ={"CCAA_communication__liveness": "4"})
    assert cfg.communication.liveness == 4


def test_env_strings_are_kept_as_strings():
    env = {"CCAA_DATA_DIR": "~/somewhere/else", "CCAA_COMMUNICATION__HUB_HOST": "10.1.2.3",
           "CCAA_AGENT_HIERARCHY__WORKER__MODEL": "haiku",
           "CCAA_COMMUNICATION__ROUTER_ENDPOINT": "tcp://h:1"}
    cfg = load_config(environ=env)
    assert cfg.data_dir == "~/somewhere/else"
    assert cfg.communication.hub_host == "10.1.2.3"
    assert cfg.agent_hierarchy["worker"].model == "haiku"
    assert cfg.communication.router() == "tcp://h:1"


def test_env_value_that_looks_like_a_number_or_bool_stays_a_string_for_a_string_setting():
    # worktree_setup is a shell command; `true` is the classic no-op command, and a model or
    # host name may well be all digits. A str setting must get the text as written.
    cfg = load_config(environ={"CCAA_ORCHESTRATOR__WORKTREE_SETUP": "true",
                               "CCAA_AGENT_HIERARCHY__WORKER__MODEL": "4"})
    assert cfg.orchestrator.worktree_setup == "true"
    assert cfg.agent_hierarchy["worker"].model == "4"


def test_unknown_ccaa_variables_outside_the_settings_are_ignored():
    env = {"CCAA_LOG_LEVEL": "debug", "CCAA_TOKEN": "x", "CCAA_": "1", "CCAA_HUB": "tcp://x:1",
           "CCAA_CONFIG_DIR": "/x", "OTHER_COMMUNICATION__HUB_PORT": "1",
           "ccaa_communication__hub_port": "2"}
    assert env_overrides(env) == {}
    assert load_config(environ=env) == SystemConfig()


def test_unknown_key_inside_a_settings_section_is_an_error():
    with pytest.raises(ConfigError, match="communication.hub_prot"):
        load_config(environ={"CCAA_COMMUNICATION__HUB_PROT": "1"})


def test_bad_env_value_is_a_config_error():
    with pytest.raises(ConfigError, match="communication.hub_port"):
        load_config(environ={"CCAA_COMMUNICATION__HUB_PORT": "lots"})


def test_load_config_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("CCAA_COMMUNICATION__LIVENESS", "7")
    monkeypatch.delenv("CCAA_CONFIG", raising=False)
    assert load_config().communication.liveness == 7


# ---- flags and precedence ---------------------------------------------------------------


def test_flag_overrides_build_a_nested_tree():
    flags = ["communication.hub_port=6000", " orchestrator.retry_backoff = 0.5 ",
             'data_dir="/x y"', "agent_hierarchy.worker.command=[\"a\", \"b\"]",
             "distribution.strategy=round_robin", "orchestrator.isolate_worktrees=false"]
    tree = flag_overrides(flags)
    assert {k: set(v) if isinstance(v, dict) else v for k, v in tree.items()} == {
        "communication": {"hub_port"},
        "orchestrator": {"retry_backoff", "isolate_worktrees"},
        "data_dir": "/x y",
        "agent_hierarchy": {"worker"},
        "distribution": {"strategy"},
    }
    cfg = load_config(environ={}, overrides=tree)
    assert cfg.communication.hub_port == 6000
    assert cfg.orchestrator.retry_backoff == 0.5
    assert cfg.orchestrator.isolate_worktrees is False
    assert cfg.data_dir == "/x y"
    assert cfg.agent_hierarchy["worker"].command == ["a", "b"]
    assert cfg.distribution.strategy == "round_robin"


@pytest.mark.parametrize("item", ["communication.hub_port", "=5", "  =5"])
def test_malformed_flag_is_a_config_error(item):
    with pytest.raises(ConfigError, match="section.key=value"):
        flag_overrides([item])


def test_precedence_flags_over_env_over_file_over_default(tmp_path):
    path = _toml(tmp_path, """
[communication]
hub_port = 1001
pub_port = 1002
sub_port = 1003
[orchestrator]
retry_attempts = 5
""")
    env = {"CCAA_COMMUNICATION__HUB_PORT": "2001", "CCAA_COMMUNICATION__PUB_PORT": "2002"}
    flags = flag_overrides(["communication.hub_port=3001"])
    cfg = load_config(path, environ=env, overrides=flags)
    assert cfg.communication.hub_port == 3001  # flag
    assert cfg.communication.pub_port == 2002  # env over file
    assert cfg.communication.sub_port == 1003  # file over default
    assert cfg.orchestrator.retry_attempts == 5  # file, sibling section untouched by env
    assert cfg.communication.liveness == 3  # default


def test_service_flags_win_over_env_and_file(tmp_path, monkeypatch):
    path = _toml(tmp_path, '[communication]\nrouter_endpoint = "tcp://file:1"\nliveness = 9\n')
    monkeypatch.delenv("CCAA_CONFIG", raising=False)
    monkeypatch.setenv("CCAA_COMMUNICATION__ROUTER_ENDPOINT", "tcp://env:1")
    monkeypatch.setenv("CCAA_COMMUNICATION__LIVENESS", "8")
    args = common_parser("x", "x").parse_args(
        ["--config", str(path), "--hub", "tcp://flag:1", "--set", "communication.liveness=7"])
    cfg = config_from_args(args)
    assert cfg.communication.router() == "tcp://flag:1"
    assert cfg.communication.liveness == 7


# ---- agent hierarchy --------------------------------------------------------------------


def test_hierarchy_roles_merge_with_the_defaults(tmp_path):
    path = _toml(tmp_path, """
[agent_hierarchy.worker]
count = 5
capabilities = ["python"]
[agent_hierarchy.reviewer]
count = 1
executor = "claude"
model = "haiku"
""")
    cfg = load_config(path, environ={"CCAA_AGENT_HIERARCHY__WORKER__CAPACITY": "2"})
    assert set(cfg.agent_hierarchy) == {"architect", "manager", "worker", "utility", "reviewer"}
    worker = cfg.agent_hierarchy["worker"]
    assert (worker.count, worker.capacity, worker.capabilities) == (5, 2, ["python"])
    assert worker.model == "sonnet" and worker.command == ["bash", "-c", "{prompt}"]
    assert cfg.agent_hierarchy["architect"].model == "opus"  # untouched default role
    reviewer = cfg.agent_hierarchy["reviewer"]
    assert reviewer == RoleConfig(count=1, executor="claude", model="haiku")
    assert cfg.role("reviewer") is reviewer


def test_gates_merge_with_the_defaults(tmp_path):
    path = _toml(tmp_path, """
[gates.tests]
command = "make test"
[gates.typecheck]
command = "mypy ."
""")
    cfg = load_config(path, environ={"CCAA_GATES__COVERAGE__MIN": "90"})
    assert {"tests", "coverage", "lint", "security", "benchmark", "typecheck"} <= set(cfg.gates)
    assert cfg.gates["tests"].command == "make test"
    assert cfg.gates["tests"].kind == "exit_code" and cfg.gates["tests"].timeout == 900.0
    # the command (and kind, pattern) still come from the repository's toolchain
    assert cfg.gates["coverage"].min == 90 and cfg.gates["coverage"].command == "auto"
    assert cfg.gates["typecheck"].command == "mypy ."
    assert cfg.gates["lint"] == SystemConfig().gates["lint"]


def test_new_role_from_env_only():
    cfg = load_config(environ={"CCAA_AGENT_HIERARCHY__TESTER__COUNT": "2"})
    assert cfg.agent_hierarchy["tester"].count == 2
    assert cfg.agent_hierarchy["worker"].count == 2
    assert cfg.agent_hierarchy["architect"].model == "opus"


def test_unknown_role_lookup_is_a_config_error():
    cfg = load_config(environ={})
    with pytest.raises(ConfigError, match="unknown role 'chef'") as info:
        cfg.role("chef")
    assert "worker" in str(info.value)


def test_role_that_is_not_a_table_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="agent_hierarchy.worker"):
        load_config(_toml(tmp_path, "[agent_hierarchy]\nworker = 3\n"), environ={})
