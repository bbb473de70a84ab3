"""When a subtask fails for good at its tier, mixed into the Workflow: the next tier
takes it, then the architect re-plans the failed part (bounded per subtask line and per
session); past that it is given up with its reason and its dependents are cancelled."""

from __future__ import annotations

from services.orchestrator import prompts
from services.orchestrator.plan import PlanError, parse_plan
from services.orchestrator.results import answer_text
from services.orchestrator.store import TaskRow


class Escalation:
    """Mixin for services.orchestrator.workflow.Workflow."""

    def _escalate(self, work: TaskRow) -> None:
        sid = work.session_id
        ladder = self.template(sid).escalation
        nxt = work.tier + 1
        if nxt < len(ladder) and ladder[nxt] != "architect":
            meta = {**work.meta, "attempt_base": work.attempt, "rounds": 0,
                    "escalations": work.meta.get("escalations", []) + [ladder[nxt]]}
            self.orch.reopen(work, f"escalated to {ladder[nxt]}", role=ladder[nxt], tier=nxt,
                             meta=meta)
            return
        if nxt < len(ladder) and work.kind == "work" and not work.meta.get("replanned"):
            limit = self._replan_limit(work)
            if limit:
                self.store.record(sid, "replan_limit", work.id, detail=limit)
                self._give_up(work, limit)
                return
            row = self.store.session(sid)
            history = "\n".join(f"{h['to_state']}: {h['detail']}" for h in
                                self.store.history(sid) if h["task_id"] == work.id)
            self.store.update_task(work, meta={**work.meta, "replanned": True})
            self._add(sid, self._task(
                sid, title=f"re-plan: {work.key}", kind="replan", role=ladder[nxt],
                parent=work.id, key=f"{work.key}:replan",
                prompt=prompts.replan(row["text"], work.meta.get("subtask", {}), history,
                                      self.roles(self.template(sid)))))
            return
        self._give_up(work, "no higher tier left" if nxt >= len(ladder) else "")

    def _replan_limit(self, work: TaskRow) -> str:
        """Why ``work`` may not be re-planned again ("" if it may)."""
        orch = self.config.orchestrator
        depth = work.meta.get("replan_depth", 0)
        if depth >= orch.max_replans:
            return (f"re-planned {depth} time(s) already (orchestrator.max_replans = "
                    f"{orch.max_replans})")
        done = sum(1 for t in self.store.tasks(work.session_id) if t.kind == "replan")
        if done >= orch.max_replans_per_session:
            return (f"the session has used its {done} re-plan(s) "
                    f"(orchestrator.max_replans_per_session = {orch.max_replans_per_session})")
        return ""

    def _give_up(self, work: TaskRow, why: str) -> None:
        """``work`` ends for good: say why, cancel what depends on it, merge the rest."""
        last = next((h["detail"] for h in reversed(self.store.history(work.session_id))
                     if h["task_id"] == work.id and h["kind"] == "task"), "")
        reason = "; ".join(filter(None, [last, why]))[:300]
        self.store.update_task(work, meta={**work.meta, "gave_up": reason})
        self._cancel_dependents(work, f"dependency {work.key or work.id} {work.state}")
        self._maybe_merge(work.session_id)

    def _replan_done(self, task: TaskRow) -> None:
        failed = self.store.task(task.parent)
        assert failed is not None
        sid = task.session_id
        plan = None
        if task.state == "succeeded":
            try:
                plan = parse_plan(answer_text(task), set(self.roles(self.template(sid))))
            except PlanError as exc:
                self.store.record(sid, "replan_rejected", task.id, detail=str(exc))
        if plan is None:
            self._give_up(failed, f"re-plan {task.state}" if task.state != "succeeded"
                          else "re-plan rejected")
            return
        new_ids = self._add_subtasks(sid, plan, prefix=f"{failed.key}.",
                                     extra_deps=list(failed.depends_on),
                                     depth=failed.meta.get("replan_depth", 0) + 1)
        self.store.update_task(failed, meta={**failed.meta, "replaced_by": new_ids})
        for t in self.store.tasks(sid):
            if failed.id in t.depends_on:
                deps = [d for d in t.depends_on if d != failed.id] + new_ids
                self.store.update_task(t, depends_on=deps)
