"""The front door: validate ``command.submit``, classify it, have the orchestrator persist
it as a session, and answer ``command.accepted`` with the session id."""

from __future__ import annotations

import os
import uuid

from prometheus_client import CollectorRegistry, Counter

from libs.config import SystemConfig
from libs.log import EventLogger, get_logger
from libs.peer import Peer, RequestFailed, RequestTimeout
from protocols import ErrorCode, Message, ProtocolError
from protocols.command import CommandAccepted, CommandSubmit, SessionCreate
from services.commands.classify import classify

ORCHESTRATOR = "orchestrator"


class Commands:
    def __init__(self, config: SystemConfig, peer: Peer, registry: CollectorRegistry,
                 log: EventLogger | None = None):
        self.config = config
        self.peer = peer
        self.log = log or get_logger("commands")
        self.accepted = Counter("ccaa_commands_accepted_total", "commands accepted, by type",
                                ["type"], registry=registry)
        self.rejected = Counter("ccaa_commands_rejected_total", "commands rejected, by code",
                                ["code"], registry=registry)
        self.handlers = {CommandSubmit.TYPE: self.on_submit}

    def validate(self, cmd: CommandSubmit) -> None:
        if not os.path.isabs(cmd.repo):
            raise ProtocolError(ErrorCode.INVALID_REQUEST,
                                f"repo must be an absolute path, got {cmd.repo!r}")
        if not os.path.isdir(cmd.repo):
            raise ProtocolError(ErrorCode.INVALID_REQUEST,
                                f"repo {cmd.repo!r} is not a directory on this host")
        if cmd.role not in self.config.agent_hierarchy:
            raise ProtocolError(ErrorCode.INVALID_REQUEST,
                                f"unknown role {cmd.role!r}; known roles: "
                                f"{', '.join(sorted(self.config.agent_hierarchy))}")

    async def on_submit(self, msg: Message) -> CommandAccepted:
        cmd = msg.body
        assert isinstance(cmd, CommandSubmit)
        try:
            self.validate(cmd)
        except ProtocolError as exc:
            self.rejected.labels(exc.code.value).inc()
            raise
        if cmd.type is not None:
            type_, reason = cmd.type, "given by the request"
        else:
            type_, reason = classify(cmd.text)
        session_id = f"s-{uuid.uuid4().hex[:10]}"
        create = SessionCreate(session_id=session_id, command=cmd, type=type_,
                               classification=reason, submitter=msg.header.src)
        try:
            await self.peer.request(ORCHESTRATOR, create)
        except RequestFailed as exc:
            self.rejected.labels(exc.code).inc()
            raise ProtocolError(ErrorCode(exc.code) if exc.code in ErrorCode._value2member_map_
                                else ErrorCode.INTERNAL,
                                f"orchestrator refused the session: {exc.reason}") from None
        except RequestTimeout:
            self.rejected.labels(ErrorCode.TIMEOUT.value).inc()
            raise ProtocolError(ErrorCode.TIMEOUT,
                                "the orchestrator did not answer; is it running?") from None
        self.accepted.labels(type_.value).inc()
        self.log.info("command.accepted", session=session_id, type=type_.value, reason=reason,
                      src=msg.header.src)
        return CommandAccepted(session_id=session_id, type=type_, classification=reason)
