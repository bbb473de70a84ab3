"""A new session, mixed into the Orchestrator: its template and gates (the repository's
toolchain, the configuration, its .ccaa.toml, the request's own list), its base commit,
its first tasks, or a cached analysis of the same commit and request."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any

from libs.worktree import head_commit
from protocols import ErrorCode, Message, ProtocolError
from protocols.command import (SessionCreate, SessionCreateBatch, SessionCreated,
                               SessionsCreated)
from protocols.events import SessionEvent, session_topic
from services.orchestrator.gates import PROJECT_FILE, GateConfigError, project_gates
from services.orchestrator.templates import Template
from services.orchestrator.toolchain import resolve


class Intake:
    """Mixin for services.orchestrator.service.Orchestrator (uses its store, config,
    templates, workflow, audit, events, log, clock, finish_session and schedule)."""

    async def on_session_create(self, msg: Message) -> SessionCreated:
        body = msg.body
        assert isinstance(body, SessionCreate)
        self._admit([body], msg.header.src)
        return SessionCreated(session_id=body.session_id)

    async def on_session_create_batch(self, msg: Message) -> SessionsCreated:
        """Many sessions in one transaction: all of them or, if one is refused, none."""
        body = msg.body
        assert isinstance(body, SessionCreateBatch)
        self._admit(body.sessions, msg.header.src)
        return SessionsCreated(session_ids=[s.session_id for s in body.sessions])

    def _admit(self, bodies: list[SessionCreate], src: str) -> None:
        """Write the sessions and start their first tasks: all of it or, if anything
        fails, nothing (one transaction)."""
        with self.store.tx():
            self._admit_all(bodies, src)

    def _admit_all(self, bodies: list[SessionCreate], src: str) -> None:
        made: list[tuple[SessionCreate, Any]] = []
        repos = _RepoFacts(self.config, self._gates_cache)
        for i, body in enumerate(bodies):
            if self.store.session(body.session_id) is not None:
                continue  # a retried request: idempotent
            try:
                made.append((body, self._create(body, src, repos)))
            except ProtocolError as exc:
                if len(bodies) == 1:
                    raise
                raise ProtocolError(exc.code, f"command {i + 1} of {len(bodies)}: "
                                              f"{exc.reason}") from None
        for body, cached in made:  # (events go out once this is committed)
            self.log.info("session.created", session=body.session_id, type=body.type.value)
            self.events.publish(session_topic("running"),
                                SessionEvent(session_id=body.session_id, state="running"))
            if cached is not None:
                self.finish_session(body.session_id, "succeeded",
                                    f"analysis reused from session {cached['id']} (same "
                                    "commit and request)", json.loads(cached["report"]))
        if made:
            self.schedule()

    def _create(self, body: SessionCreate, src: str, repos: "_RepoFacts") -> Any:
        """Write one session and its first tasks (inside the caller's transaction); returns
        the earlier analysis it reuses, if any."""
        cmd = body.command
        template = self.templates.get(body.type.value)
        if template is None:
            raise ProtocolError(ErrorCode.INVALID_REQUEST,
                                f"no workflow template for {body.type.value}")
        gates = repos.gates(cmd.repo)
        toolchain = None
        if template.gates or template.final_gates or cmd.gates:  # RUN, ANALYZE have none
            gates, toolchain = resolve(cmd.repo, gates)
        if cmd.gates is not None:
            unknown = sorted(set(cmd.gates) - set(gates))
            if unknown:
                raise ProtocolError(ErrorCode.INVALID_REQUEST,
                                    f"unknown gates: {', '.join(unknown)}; configured: "
                                    f"{', '.join(sorted(gates))}")
            template = template.model_copy(update={
                "gates": list(cmd.gates),
                "final_gates": list(cmd.gates) if template.final_gates else []})
        base = repos.head(cmd.repo)
        if template.plan is not None and not base:
            raise ProtocolError(ErrorCode.INVALID_REQUEST,
                                f"{body.type.value} needs a git repository with at least one "
                                f"commit; {cmd.repo} is not one")
        columns = {"template": self._template_json(template),
                   "gates": repos.gates_json(cmd.repo) if toolchain is None
                   and cmd.gates is None else {k: v.model_dump() for k, v in gates.items()},
                   "budget_usd": cmd.budget_usd or template.budget_usd,
                   "max_parallel": cmd.max_parallel or template.max_parallel,
                   "priority": cmd.priority,
                   "deadline_at": self.clock() + cmd.deadline_s if cmd.deadline_s else None}
        cached = self._cached_analysis(body, template, base)
        tasks = [] if cached else self.workflow.first_tasks(body.session_id, template, cmd.text,
                                                            cmd.role, cmd.repo)
        for t in tasks:
            t["priority"] = cmd.priority
            if cmd.timeout_s:
                t["timeout_s"] = cmd.timeout_s
        self.store.create_session(body.session_id, body.type.value, cmd.text, cmd.repo,
                                  body.classification, cmd.model_dump(mode="json"), tasks,
                                  base_commit=base, **columns)
        if toolchain is not None:
            self.store.record(body.session_id, "toolchain",
                              detail=(", ".join(toolchain.names) or "none detected")
                              + "; gates: " + ", ".join(f"{k} = {v.command}" for k, v in
                                                        gates.items() if v.command)[:400])
        self.audit.add("submit", body.submitter or src, session_id=body.session_id,
                       detail=f"{body.type.value} in {cmd.repo}: {cmd.text[:200]}")
        return cached

    def _template_json(self, template: Template) -> str:
        """The template as stored with each session, serialised once per template (the
        configured ones live as long as the process; a request's own copy is not kept)."""
        kept = self._template_cache.get(template.type)
        if kept is not None and kept[0] is template:
            return kept[1]
        text = json.dumps(template.model_dump())
        if self.templates.get(template.type) is template:
            self._template_cache[template.type] = (template, text)
        return text

    def _cached_analysis(self, body: SessionCreate, template: Template, base: str) -> Any:
        if not template.cache or not base:
            return None
        return self.store.find_session(type=body.type.value, base_commit=base,
                                       text=body.command.text, state="succeeded")


#: repositories whose project gates are kept between intakes (least recently used go)
GATES_CACHED = 256


class GatesCache:
    """Each repository's gates (the configuration's, overridden by its .ccaa.toml), kept
    while that file is unchanged (same size and modification time) or still absent: read
    and validated once, not for every session."""

    def __init__(self, defaults: dict[str, Any]):
        self.defaults = defaults
        self._kept: OrderedDict[str, tuple[Any, dict[str, Any], str]] = OrderedDict()

    def get(self, repo: str) -> tuple[dict[str, Any], str]:
        """The gates (the kept mapping: copy it to change it) and their JSON as a session
        stores them. Raises ProtocolError for a .ccaa.toml that is not valid."""
        try:
            st = os.stat(os.path.join(repo, PROJECT_FILE))
            mark: Any = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            mark = None
        kept = self._kept.get(repo)
        if kept is not None and kept[0] == mark:
            self._kept.move_to_end(repo)
            return kept[1], kept[2]
        try:
            gates = project_gates(repo, self.defaults)
        except GateConfigError as exc:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, str(exc)) from None
        text = json.dumps({k: v.model_dump() for k, v in gates.items()})
        self._kept[repo] = (mark, gates, text)
        while len(self._kept) > GATES_CACHED:
            self._kept.popitem(last=False)
        return gates, text


class _RepoFacts:
    """What one intake learns of each repository (its gates, its HEAD), learned once."""

    def __init__(self, config: Any, gates: GatesCache):
        self.config = config
        self._cache = gates
        self._gates: dict[str, tuple[dict[str, Any], str]] = {}
        self._heads: dict[str, str] = {}

    def _got(self, repo: str) -> tuple[dict[str, Any], str]:
        if repo not in self._gates:  # one look at the .ccaa.toml per intake
            self._gates[repo] = self._cache.get(repo)
        return self._gates[repo]

    def gates(self, repo: str) -> dict[str, Any]:
        return dict(self._got(repo)[0])  # (callers may change their copy)

    def gates_json(self, repo: str) -> str:
        return self._got(repo)[1]

    def head(self, repo: str) -> str:
        if repo not in self._heads:
            self._heads[repo] = (head_commit(repo) if self.config.orchestrator.isolate_worktrees
                                 else "")
        return self._heads[repo]
