"""Claude Code sessions that follow their task: a retry or a sent-back task resumes the
session of its previous attempt wherever it lands.

Claude Code keeps a session as ``<config dir>/projects/<cwd, non-alphanumerics as
'->/<session id>.jsonl`` and ``--resume`` looks for it under the *current* directory's
project only. So before a resumed run the transcript is put where the CLI will look: it is
there already (same worktree path on the same host), or copied from another project of
this host, or fetched from the agent that ran the previous attempt (``claude.transcript_get``
over the bus). When none of that works the run starts a fresh session whose prompt carries
the previous attempt's report, and the log says which it was."""

from __future__ import annotations

import os
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from protocols.task import MAX_TRANSCRIPT, Transcript, TranscriptGet

#: fetches a session's compressed transcript from a named agent (raises when it cannot)
Fetch = Callable[[str, TranscriptGet], Awaitable[Transcript]]
#: seconds to wait for the previous agent's answer
FETCH_TIMEOUT = 20.0
SESSION_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def config_dir(env: dict[str, str]) -> Path:
    """Where the CLI run with ``env`` keeps its sessions."""
    configured = env.get("CLAUDE_CONFIG_DIR") or os.environ.get("CLAUDE_CONFIG_DIR")
    return Path(configured) if configured else Path.home() / ".claude"


def project_dir(config: Path, cwd: str) -> Path:
    return config / "projects" / re.sub(r"[^A-Za-z0-9]", "-", os.path.abspath(cwd))


def find(config: Path, session_id: str) -> Path | None:
    """This host's transcript of ``session_id``, in whichever project it was run."""
    if not SESSION_ID.match(session_id):
        return None
    for path in sorted((config / "projects").glob(f"*/{session_id}.jsonl")):
        if path.is_file():
            return path
    return None


def pack(config: Path, session_id: str) -> bytes:
    """The transcript, compressed, for ``claude.transcript``; FileNotFoundError when this
    host does not have it, ValueError when it is too large to send."""
    path = find(config, session_id)
    if path is None:
        raise FileNotFoundError(f"no Claude Code session {session_id} on this host")
    data = zlib.compress(path.read_bytes(), 6)
    if len(data) > MAX_TRANSCRIPT:
        raise ValueError(f"session {session_id}'s transcript is {len(data)} bytes compressed, "
                         f"over the {MAX_TRANSCRIPT} a message may carry")
    return data


@dataclass
class Restored:
    mode: str  # "here", "copied", "fetched", or "summary" (the session could not resume)
    detail: str

    @property
    def resumes(self) -> bool:
        return self.mode != "summary"


async def restore(config: Path, cwd: str, session_id: str, prefer_agent: str, me: str,
                  fetch: Fetch | None) -> Restored:
    """Put the transcript of ``session_id`` where ``claude --resume`` run in ``cwd`` looks."""
    target = project_dir(config, cwd) / f"{session_id}.jsonl"
    if target.is_file():
        return Restored("here", f"session {session_id} is on this host")
    local = find(config, session_id)
    if local is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)
        return Restored("copied", f"session {session_id} copied from {local.parent.name}")
    if not prefer_agent or prefer_agent == me or fetch is None:
        return Restored("summary", f"session {session_id} is not on this host and no other "
                                   "agent is known to have it")
    try:
        reply = await fetch(prefer_agent, TranscriptGet(session_id=session_id))
        data = zlib.decompress(reply.data)
    except Exception as exc:  # unreachable, refused, gone, corrupt: the fallback applies
        return Restored("summary", f"session {session_id} could not be fetched from "
                                   f"{prefer_agent}: {exc}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600)
    tmp.replace(target)
    return Restored("fetched", f"session {session_id} fetched from {prefer_agent} "
                               f"({len(reply.data)} bytes compressed)")


def fresh_prompt(prompt: str, summary: str, why: str) -> str:
    """The prompt of a fresh session standing in for one that cannot resume."""
    report = summary.strip() or "(it left no report)"
    return (f"{prompt}\n\nCONTEXT: a previous attempt at this task ran in a session that "
            f"cannot be resumed here ({why}). Its commits are already on this branch; "
            f"read them before you change anything. Its final report was:\n{report}")
