"""A node's configuration: the hub's, with only what a host decides for itself on top."""

import json

import pytest

from libs.config import ConfigError, load_config
from libs.nodeconfig import (agent_environ, node_config, role_problems, shared_config,
                             write_effective)

pytestmark = pytest.mark.timeout(10)


def central(**overrides):
    base = {"communication": {"token": "s3cret", "heartbeat_interval": 0.5, "liveness": 4},
            "reporting": {"http_token": "web-secret"},
            "metrics": {"host": "0.0.0.0", "advertise_host": "hub.example"},
            "resources": {"max_agents_total": 8, "agent_memory_mb": 500},
            "agent_hierarchy": {"worker": {"count": 4, "model": "opus",
                                           "system_prompts": ["be careful"]},
                                "reviewer": {"count": 1, "executor": "command",
                                             "command": ["bash", "-c", "{prompt}"]}},
            "gates": {"lint": {"command": "ruff check src"}}}
    base.update(overrides)
    return shared_config(load_config(environ={}, overrides=base))


def test_the_hub_shares_its_configuration_without_its_secrets():
    shared = central()
    assert "token" not in shared["communication"]
    assert "http_token" not in shared["reporting"]
    assert "s3cret" not in json.dumps(shared) and "web-secret" not in json.dumps(shared)
    assert shared["gates"]["lint"]["command"] == "ruff check src"


def test_roles_gates_and_timing_come_from_the_hub_counts_and_limits_from_the_node():
    local = {"agent_hierarchy": {"worker": {"count": 2, "model": "haiku"}},
             "resources": {"agent_memory_mb": 300},
             "communication": {"heartbeat_interval": 5.0, "keys_dir": "/etc/ccaa/keys"},
             "gates": {"lint": {"command": "true"}},
             "metrics": {"host": "10.0.0.7", "agent_ports": "9500-9599"}}
    config, ignored = node_config(central(), local, router="tcp://hub.example:6000",
                                  pub_port=6001, sub_port=6002)
    worker = config.agent_hierarchy["worker"]
    assert worker.count == 2 and worker.model == "opus" and worker.system_prompts == ["be careful"]
    assert config.agent_hierarchy["reviewer"].count == 1  # a role the node did not mention
    assert config.gates["lint"].command == "ruff check src"
    assert config.communication.heartbeat_interval == 0.5 and config.communication.liveness == 4
    assert config.communication.keys_dir == "/etc/ccaa/keys"
    assert config.resources.agent_memory_mb == 300 and config.resources.max_agents_total == 8
    # the node's own addresses, never the hub's
    assert config.metrics.host == "10.0.0.7" and config.metrics.advertise_host == ""
    assert config.communication.router() == "tcp://hub.example:6000"
    assert config.communication.pub() == "tcp://hub.example:6001"
    assert config.communication.sub() == "tcp://hub.example:6002"
    assert sorted(ignored) == ["agent_hierarchy.worker.model", "communication.heartbeat_interval",
                               "gates"]


def test_a_setting_equal_to_the_hubs_is_not_reported_as_ignored():
    local = {"agent_hierarchy": {"worker": {"model": "opus"}},
             "communication": {"liveness": 4}}
    _, ignored = node_config(central(), local, router="tcp://h:5555", pub_port=1, sub_port=2)
    assert ignored == []


def test_a_role_the_hub_does_not_define_is_refused_by_name():
    with pytest.raises(ConfigError, match="role 'gpu-worker'.*does not define.*reviewer"):
        node_config(central(), {"agent_hierarchy": {"gpu-worker": {"count": 1}}},
                    router="tcp://h:5555", pub_port=1, sub_port=2)


def test_a_role_this_host_cannot_run_is_named_with_the_reason(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CCAA_CLAUDE_PATH", raising=False)
    config, _ = node_config(central(), {"agent_hierarchy": {
        "worker": {"count": 1, "cli_path": "/no/such/claude"},
        "reviewer": {"count": 1}}}, router="tcp://h:5555", pub_port=1, sub_port=2)
    problems = role_problems(config)
    assert any("'worker' runs Claude Code" in p and "/no/such/claude" in p for p in problems)
    assert any("'reviewer' runs 'bash'" in p and "PATH" in p for p in problems)
    # a role with no agents here is no problem
    config.agent_hierarchy["reviewer"].count = 0
    assert not any("reviewer" in p for p in role_problems(config))


def test_the_effective_file_round_trips_without_the_token(tmp_path):
    config, _ = node_config(central(), {"communication": {"token": "node-token"}},
                            router="tcp://h:5555", pub_port=1, sub_port=2)
    assert config.communication.token == "node-token"
    path = tmp_path / "node-config.json"
    write_effective(config, path)
    assert "node-token" not in path.read_text()
    assert path.stat().st_mode & 0o077 == 0
    again = load_config(path, environ={})
    assert again.agent_hierarchy["worker"].model == "opus"
    assert again.communication.router() == "tcp://h:5555"


def test_agents_of_a_node_do_not_inherit_setting_variables_but_keep_the_token():
    env = agent_environ({"CCAA_AGENT_HIERARCHY__WORKER__MODEL": "haiku",
                         "CCAA_COMMUNICATION__TOKEN": "t", "CCAA_RUN_DIR": "/r", "PATH": "/bin"})
    assert env == {"CCAA_COMMUNICATION__TOKEN": "t", "CCAA_RUN_DIR": "/r", "PATH": "/bin"}
