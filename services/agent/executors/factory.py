"""Build the executor a role's configuration asks for (a task may name another one in
``spec.executor``).

The ``claude`` executor also reads the agent's environment:

- ``CCAA_MODEL_BASE_URL``: the Anthropic-compatible API the CLI talks to (e.g. the
  scripted model server); becomes the child's ``ANTHROPIC_BASE_URL``, and
  ``ANTHROPIC_API_KEY`` defaults to ``"offline"`` when it is not set, and the CLI's
  config and sessions go to ``<data_dir>/claude`` (``CLAUDE_CONFIG_DIR``) rather than
  the user's ``~/.claude``.
- ``CCAA_CLAUDE_PATH``: the ``claude`` binary (default: ``claude`` on PATH, then the one
  bundled with claude-agent-sdk).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

from libs.config import ConfigError, RoleConfig, SystemConfig
from protocols.task import TaskSpec
from services.agent.executors.base import Executor
from services.agent.executors.command import CommandExecutor
from services.agent.executors.environment import task_env

MODEL_BASE_URL_ENV = "CCAA_MODEL_BASE_URL"
CLAUDE_PATH_ENV = "CCAA_CLAUDE_PATH"
EXECUTORS = ("command", "claude", "python", "gate")


def claude_env(environ: Mapping[str, str] | None = None, config_dir: str = "") -> dict[str, str]:
    """What the claude executor adds to the CLI's environment, from the agent's."""
    environ = os.environ if environ is None else environ
    env: dict[str, str] = {}
    base_url = environ.get(MODEL_BASE_URL_ENV, "")
    if base_url:
        env["ANTHROPIC_BASE_URL"] = base_url
        if not environ.get("ANTHROPIC_API_KEY"):
            env["ANTHROPIC_API_KEY"] = "offline"
        if config_dir and not environ.get("CLAUDE_CONFIG_DIR"):
            # offline runs keep their sessions out of the user's own ~/.claude
            env["CLAUDE_CONFIG_DIR"] = config_dir
    return env


def _claude_env_of(config: SystemConfig) -> dict[str, str]:
    return claude_env(config_dir=str(config.data_path() / "claude"))


def claude_sessions_dir(config: SystemConfig) -> Path:
    """Where this agent's Claude Code runs keep their sessions."""
    from services.agent.executors.transcripts import config_dir

    return config_dir(_claude_env_of(config))


def role_auth(config: SystemConfig, role_name: str):
    """Whether the Claude Code CLI this role's agents run can authenticate here, with the
    environment they give it (claude_auth.AuthStatus; a missing CLI is a failure too)."""
    from services.agent.executors.claude import resolve_cli
    from services.agent.executors.claude_auth import AuthStatus, auth_status, effective_env

    role = config.role(role_name)
    try:
        cli = resolve_cli(role.cli_path or os.environ.get(CLAUDE_PATH_ENV) or None)
    except FileNotFoundError as exc:
        return AuthStatus(False, "none", str(exc))
    return auth_status(cli, effective_env(_claude_env_of(config)))


def _claude(config: SystemConfig, role: RoleConfig) -> Executor:
    from services.agent.executors.claude import ClaudeExecutor  # the SDK loads only if used

    return ClaudeExecutor(role, env=_claude_env_of(config),
                          cli_path=role.cli_path or os.environ.get(CLAUDE_PATH_ENV) or None,
                          worktree_root=str(config.data_path() / "worktrees"),
                          worktree_setup=config.orchestrator.worktree_setup)


def executor_factory(config: SystemConfig, role_name: str) -> Callable[[TaskSpec], Executor]:
    role = config.role(role_name)
    if role.executor not in EXECUTORS:
        raise ConfigError(f"role {role_name!r}: executor {role.executor!r} is not available")

    if role.executor == "claude":
        # load the SDK now: importing it inside a task would stall the agent's loop (and
        # its heartbeats) for a second or more
        import services.agent.executors.claude  # noqa: F401
    function = None
    if role.callable or role.executor == "python":
        from services.agent.executors.python import CallableError, PythonExecutor, resolve

        if not role.callable:
            raise ConfigError(f"role {role_name!r}: the python executor needs `callable` "
                              "('package.module:function')")
        try:
            function = resolve(role.callable)
        except CallableError as exc:
            raise ConfigError(f"role {role_name!r}: {exc}") from None

    def make(spec: TaskSpec) -> Executor:
        kind = spec.executor or role.executor
        if kind == "command":
            return CommandExecutor(role.command, env=task_env(role.env_passthrough),
                                   worktree_root=str(config.data_path() / "worktrees"),
                                   worktree_setup=config.orchestrator.worktree_setup)
        if kind == "claude":
            return _claude(config, role)
        if kind == "python":
            if function is None:
                raise ValueError(f"role {role_name!r} has no `callable` for the python executor")
            return PythonExecutor(function)
        if kind == "gate":  # a quality gate (the owner names it per task)
            from services.agent.executors.gate import GateExecutor

            return GateExecutor(env=task_env(role.env_passthrough),
                                worktree_root=str(config.data_path() / "worktrees"),
                                worktree_setup=config.orchestrator.worktree_setup)
        raise ValueError(f"unknown executor {kind!r} (available: {', '.join(EXECUTORS)})")

    return make
