"""A node's configuration: the hub's (central) configuration, with what one host decides
for itself on top.

A node (`ccaa node`: one host's controller and its agents) needs only the hub's address,
its key and its token. Role definitions, gates, templates, timing and the rest come from
the hub (``node.config``), so hosts cannot drift apart. A host decides only where it
connects and with what key, where its data lives, its own metrics addresses, its limits
and scaling, and how many agents of each role it runs (and where its `claude` binary is).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from libs.config import CommunicationConfig, ConfigError, SystemConfig, build_config
from protocols.errors import ErrorCode
from protocols.node import NodeConfigGet, NodeConfigReply
from protocols.peer import PeerKind

#: sections a node decides itself, on top of the hub's values
LOCAL_SECTIONS = ("resources", "auto_scaling")
#: settings only the node knows (its addresses and paths): the hub's are not used
HOST_ONLY = ("data_dir", "metrics")
LOCAL_COMMUNICATION = ("hub_host", "hub_port", "router_endpoint", "pub_endpoint",
                       "sub_endpoint", "curve", "keys_dir", "client_key", "agent_key", "node_key",
                       "token")
LOCAL_ROLE = ("count", "cli_path")
#: never sent to a node
SECRETS = (("communication", "token"), ("reporting", "http_token"))
EFFECTIVE_FILE = "node-config.json"


def shared_config(config: SystemConfig) -> dict[str, Any]:
    """The hub's configuration as nodes get it: JSON values, secrets left out."""
    tree = config.model_dump(mode="json")
    for section, key in SECRETS:
        tree.get(section, {}).pop(key, None)
    return tree


def node_config(central: Mapping[str, Any], local: Mapping[str, Any], *, router: str,
                pub_port: int, sub_port: int) -> tuple[SystemConfig, list[str]]:
    """The effective configuration of a node: ``central`` (the hub's, from
    ``node.config``) with the node's own settings (``local``: its file, environment and
    flags, as given) where a host decides them. Returns it with one line per local setting
    that differs from the hub's and was not taken. A role the hub does not define is an
    error."""
    tree = json.loads(json.dumps(dict(central)))  # a deep copy
    for key in HOST_ONLY:
        tree.pop(key, None)
    for key in LOCAL_COMMUNICATION:  # how this host reaches the hub is its own business
        tree.get("communication", {}).pop(key, None)
    ignored: list[str] = []
    for key, value in local.items():
        if key in HOST_ONLY:
            tree[key] = value
        elif key in LOCAL_SECTIONS:
            if isinstance(value, Mapping) and isinstance(tree.get(key), dict):
                tree[key] = {**tree[key], **value}
            else:
                tree[key] = value
        elif key == "communication" and isinstance(value, Mapping):
            for name, v in value.items():
                if name in LOCAL_COMMUNICATION:
                    tree.setdefault("communication", {})[name] = v
                elif tree.get("communication", {}).get(name) != v:
                    ignored.append(f"communication.{name}")
        elif key == "agent_hierarchy" and isinstance(value, Mapping):
            roles = tree.get("agent_hierarchy", {})
            for role, settings in value.items():
                if role not in roles:
                    raise ConfigError(
                        f"this node asks for role {role!r}, which the hub's configuration "
                        f"does not define (it defines {', '.join(sorted(roles)) or 'none'}); "
                        "roles are defined on the hub's host")
                for name, v in (settings or {}).items() if isinstance(settings, Mapping) else ():
                    if name in LOCAL_ROLE:
                        roles[role][name] = v
                    elif roles[role].get(name) != v:
                        ignored.append(f"agent_hierarchy.{role}.{name}")
        elif tree.get(key) != value:
            ignored.append(key)
    comm = tree.setdefault("communication", {})
    host = _host_of(router)
    comm.update(router_endpoint=router)
    comm.setdefault("pub_endpoint", "")
    comm.setdefault("sub_endpoint", "")
    local_comm = local.get("communication", {}) if isinstance(local.get("communication"), Mapping) else {}
    if not local_comm.get("pub_endpoint"):
        comm["pub_endpoint"] = f"tcp://{host}:{pub_port}"
    if not local_comm.get("sub_endpoint"):
        comm["sub_endpoint"] = f"tcp://{host}:{sub_port}"
    return build_config(tree), ignored


async def fetch(comm: CommunicationConfig, *, host: str, name: str = "",
                kind: PeerKind = PeerKind.CLIENT, timeout: float = 10.0) -> NodeConfigReply:
    """Ask the hub at ``comm.router()`` for its configuration (``node.config``)."""
    from libs.client import BusClient
    from libs.peer import RequestFailed

    async with BusClient(comm, name=name, connect_timeout=timeout, kind=kind, host=host) as bus:
        try:
            reply = await bus.request("hub", NodeConfigGet(host=host), timeout=timeout)
        except RequestFailed as exc:
            if exc.code == ErrorCode.UNSUPPORTED.value:
                raise ConfigError(f"the hub at {comm.router()} does not share its "
                                  "configuration with nodes (it runs an older ccaa)") from None
            raise
    assert isinstance(reply.body, NodeConfigReply)
    return reply.body


@dataclass
class NodeSetup:
    config: SystemConfig  # the node's effective configuration (its own token in it)
    ignored: list[str]  # local settings the hub's configuration overrode
    problems: list[str]  # roles this host is asked to run but cannot
    hub_id: str


async def setup(comm: CommunicationConfig, local: Mapping[str, Any], *, host: str,
                name: str = "", kind: PeerKind = PeerKind.CLIENT) -> NodeSetup:
    """Ask the hub for its configuration and make this node's of it (``local``: the node's
    own settings as given)."""
    reply = await fetch(comm, host=host, name=name, kind=kind, timeout=comm.message_timeout)
    config, ignored = node_config(reply.config, local, router=comm.router(),
                                  pub_port=reply.pub_port, sub_port=reply.sub_port)
    config.communication.token = comm.token
    return NodeSetup(config, ignored, role_problems(config), reply.hub_id)


def _host_of(endpoint: str) -> str:
    if not endpoint.startswith("tcp://") or ":" not in endpoint[6:]:
        raise ConfigError(f"the hub's address must look like tcp://HOST:PORT, not {endpoint!r}")
    return endpoint[6:].rsplit(":", 1)[0]


def role_problems(config: SystemConfig) -> list[str]:
    """Why this host cannot run a role it is asked to run (none: it can)."""
    from services.agent.executors.claude import resolve_cli

    problems = []
    scaling = config.auto_scaling
    for name, role in config.agent_hierarchy.items():
        wanted = max(role.count, scaling.max_agents_per_type.get(name, 0) if scaling.enabled else 0)
        if wanted == 0:
            continue
        if role.executor == "claude":
            try:
                resolve_cli(role.cli_path or None)
            except FileNotFoundError as exc:
                problems.append(f"role {name!r} runs Claude Code, but {exc}")
        elif role.command and "{" not in role.command[0] and not shutil.which(role.command[0]):
            problems.append(f"role {name!r} runs {role.command[0]!r}, which is not on this "
                            "host's PATH")
    return problems


def write_effective(config: SystemConfig, path: Path) -> None:
    """The node's effective configuration, for its agents (``--config`` takes JSON); the
    bus token stays out of it (agents read it from the data directory or environment)."""
    tree = config.model_dump(mode="json")
    tree["communication"].pop("token", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(tree, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def agent_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """A node's agents' environment: the node's, less the ``CCAA_*`` variables that name
    settings (the node's effective configuration already holds what the host may decide;
    the rest is the hub's), except the bus token."""
    from libs.config import env_overrides

    keep = {"CCAA_COMMUNICATION__TOKEN"}
    return {k: v for k, v in environ.items()
            if k in keep or not env_overrides({k: v})}
