"""Build the executor a role's configuration asks for."""

from __future__ import annotations

from typing import Callable

from libs.config import ConfigError, SystemConfig
from protocols.task import TaskSpec
from services.agent.executors.base import Executor
from services.agent.executors.command import CommandExecutor


def executor_factory(config: SystemConfig, role_name: str) -> Callable[[TaskSpec], Executor]:
    role = config.role(role_name)
    if role.executor == "command":
        def make(spec: TaskSpec) -> Executor:
            return CommandExecutor(role.command)
        return make
    raise ConfigError(f"role {role_name!r}: executor {role.executor!r} is not available")
