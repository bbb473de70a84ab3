"""Event bodies published on the bus. Topics are hierarchical: ``task.<state>``,
``session.<state>``, ``agent.<state>``, ``service.<state>``, ``task.progress``."""

from __future__ import annotations

from protocols.base import Body


class TaskEvent(Body):
    TYPE = "event.task"
    session_id: str
    task_id: str
    attempt_id: str
    state: str
    prev_state: str = ""
    agent_id: str = ""
    detail: str = ""


class SessionEvent(Body):
    TYPE = "event.session"
    session_id: str
    state: str
    detail: str = ""


class PeerEvent(Body):
    TYPE = "event.peer"
    name: str
    kind: str
    role: str = ""
    state: str  # registered | refused | lost | disconnected | <heartbeat state>
    reason: str = ""
    #: on registered / refused: who it is, for the audit log (key: its CurveZMQ key name)
    key: str = ""
    host: str = ""
    pid: int = 0
    user: str = ""


class KeysChanged(Body):
    """The hub re-read its allow-list (SIGHUP): the key names now listed or gone."""

    TYPE = "event.keys"
    added: list[str] = []
    removed: list[str] = []


def task_topic(state: str) -> str:
    return f"task.{state}"


def session_topic(state: str) -> str:
    return f"session.{state}"


KEYS_TOPIC = "keys.changed"


def peer_topic(kind: str, state: str) -> str:
    """``agent.lost``, ``service.registered``, ``client.disconnected`` ..."""
    return f"{kind}.{state}"
