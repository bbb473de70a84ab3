"""The table of message types: header ``type`` -> body model."""

from __future__ import annotations

from protocols import audit, command, events, node, peer, repo, task
from protocols.base import Body
from protocols.errors import ErrorCode, ProtocolError

_MODELS: list[type[Body]] = [
    peer.PeerRegister,
    peer.PeerRegistered,
    peer.PeerHeartbeat,
    peer.PeerDisconnect,
    peer.Error,
    peer.Ack,
    peer.Bundle,
    peer.RegistryList,
    peer.RegistryListReply,
    node.NodeConfigGet,
    node.NodeConfigReply,
    repo.RepoFetch,
    repo.RepoOffer,
    repo.RepoChunkGet,
    repo.RepoChunk,
    repo.RepoRelease,
    repo.RepoPush,
    repo.RepoPushChunk,
    repo.RepoPushDone,
    repo.RepoPushed,
    command.CommandSubmit,
    command.CommandAccepted,
    command.CommandSubmitBatch,
    command.CommandAcceptedBatch,
    command.CommandStatus,
    command.CommandCancel,
    command.CommandStatusReply,
    command.SessionCreate,
    command.SessionCreated,
    command.SessionCreateBatch,
    command.SessionsCreated,
    command.SessionList,
    command.SessionListReply,
    command.SessionCounts,
    command.SessionCountsReply,
    command.TaskLogs,
    command.TaskLogsReply,
    task.TaskEnqueue,
    task.TranscriptGet,
    task.Transcript,
    task.TaskAssign,
    task.TaskDispatched,
    task.TaskAccepted,
    task.TaskProgress,
    task.TaskResult,
    task.TaskResultAck,
    task.TaskCancel,
    task.TaskReleased,
    task.TaskWaiting,
    task.AgentStats,
    task.AgentStatsReply,
    task.QueueStats,
    task.QueueStatsReply,
    events.TaskEvent,
    events.SessionEvent,
    events.PeerEvent,
    events.KeysChanged,
    audit.AuditQuery,
    audit.AuditReply,
]

MESSAGE_TYPES: dict[str, type[Body]] = {m.TYPE: m for m in _MODELS}
assert len(MESSAGE_TYPES) == len(_MODELS), "duplicate message TYPE"


def body_model(type_: str) -> type[Body]:
    try:
        return MESSAGE_TYPES[type_]
    except KeyError:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {type_!r}") from None
