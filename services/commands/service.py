"""The front door: validate ``command.submit``, classify it, have the orchestrator persist
it as a session, and answer ``command.accepted`` with the session id."""

from __future__ import annotations

import os


from prometheus_client import CollectorRegistry, Counter

from libs.config import SystemConfig
from libs.ids import ordered_id
from libs.log import EventLogger, get_logger
from libs.peer import Peer, RequestFailed, RequestTimeout
from protocols import ErrorCode, Message, ProtocolError
from protocols.base import Body
from protocols.command import (CommandAccepted, CommandAcceptedBatch, CommandSubmit, CommandType,
                               CommandSubmitBatch, SessionCreate, SessionCreateBatch)
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
        for type_ in CommandType:  # every series exists from the start
            self.accepted.labels(type_.value)
        for code in ErrorCode:
            self.rejected.labels(code.value)
        self.handlers = {CommandSubmit.TYPE: self.on_submit,
                         CommandSubmitBatch.TYPE: self.on_submit_batch}

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

    def _prepare(self, cmd: CommandSubmit, src: str) -> SessionCreate:
        try:
            self.validate(cmd)
        except ProtocolError as exc:
            self.rejected.labels(exc.code.value).inc()
            raise
        if cmd.type is not None:
            type_, reason = cmd.type, "given by the request"
        else:
            type_, reason = classify(cmd.text)
        return SessionCreate(session_id=ordered_id("s"), command=cmd, type=type_,
                             classification=reason, submitter=src)

    async def _create(self, body: Body, n: int) -> None:
        try:
            await self.peer.request(ORCHESTRATOR, body)
        except RequestFailed as exc:
            self.rejected.labels(exc.code).inc(n)
            raise ProtocolError(ErrorCode(exc.code) if exc.code in ErrorCode._value2member_map_
                                else ErrorCode.INTERNAL,
                                f"orchestrator refused the session: {exc.reason}") from None
        except RequestTimeout:
            self.rejected.labels(ErrorCode.TIMEOUT.value).inc(n)
            raise ProtocolError(ErrorCode.TIMEOUT,
                                "the orchestrator did not answer; is it running?") from None

    def _accepted(self, create: SessionCreate, src: str) -> CommandAccepted:
        self.accepted.labels(create.type.value).inc()
        self.log.info("command.accepted", session=create.session_id, type=create.type.value,
                      reason=create.classification, src=src)
        return CommandAccepted(session_id=create.session_id, type=create.type,
                               classification=create.classification)

    async def on_submit(self, msg: Message) -> CommandAccepted:
        cmd = msg.body
        assert isinstance(cmd, CommandSubmit)
        create = self._prepare(cmd, msg.header.src)
        await self._create(create, 1)
        return self._accepted(create, msg.header.src)

    async def on_submit_batch(self, msg: Message) -> CommandAcceptedBatch:
        """All the commands become sessions in one orchestrator transaction, or none does."""
        batch = msg.body
        assert isinstance(batch, CommandSubmitBatch)
        creates = []
        for i, cmd in enumerate(batch.commands):
            try:
                creates.append(self._prepare(cmd, msg.header.src))
            except ProtocolError as exc:
                raise ProtocolError(exc.code, f"command {i + 1} of {len(batch.commands)}: "
                                              f"{exc.reason}") from None
        await self._create(SessionCreateBatch(sessions=creates), len(creates))
        return CommandAcceptedBatch(accepted=[self._accepted(c, msg.header.src)
                                              for c in creates])
