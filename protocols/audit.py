"""The audit log: append-only records of who did what (submit, cancel, register, refusal,
key change, prune, backup, restore), kept by the orchestrator and queried with
``ccaa audit``."""

from __future__ import annotations

from pydantic import Field

from protocols.base import Body


class AuditRecord(Body):
    ts: float
    action: str  # submit | cancel | register | refused | keys | prune | backup | restore
    actor: str  # the peer (or process) that did it
    who: str = ""  # its key name under CurveZMQ, else the user@host it registered with
    session_id: str = ""
    detail: str = ""


class AuditQuery(Body):
    TYPE = "audit.query"
    since: float = 0.0  # unix time; 0: from the oldest record kept
    session_id: str = ""
    action: str = ""
    limit: int = Field(default=200, ge=1, le=10_000)


class AuditReply(Body):
    TYPE = "audit.reply"
    records: list[AuditRecord]  # oldest first
