"""A node (one host's controller and agents) asks the hub for the central configuration:
role definitions and everything else a host must not decide for itself."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from protocols.base import Body


class NodeConfigGet(Body):
    TYPE = "node.config"
    host: str = Field(default="", max_length=253)  # the asking host (for the log)


class NodeConfigReply(Body):
    TYPE = "node.config_reply"
    hub_id: str
    #: the hub's configuration as JSON values, secrets (bus token, reporter token) left out
    config: dict[str, Any]
    #: the ports the hub's event sockets listen on (publishers, subscribers)
    pub_port: int = Field(ge=0, le=65535)
    sub_port: int = Field(ge=0, le=65535)
