"""Session workflows: what happens after each task ends, per the session's template.

single:  one task (run / analyze) does the command.
planned: plan (architect) -> work subtasks as a DAG (workers, in parallel) -> per-subtask
         gates (utility agents run real commands) -> review (manager verdict) -> merge into
         the session branch in dependency order (conflicts go to a manager) -> final gates
         -> summary report. Failures retry (the orchestrator's backoff), then escalate
         worker -> manager -> architect (re-plans the failed part); a session ends with
         what succeeded and says what did not.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from libs import worktree
from libs.config import GateConfig
from services.orchestrator import completeness, merge, prompts
from services.orchestrator.gates import Verdict, evaluate, gate_run
from services.orchestrator.plan import (
    Plan,
    PlanError,
    parse_plan,
    topological_order,
)
from services.orchestrator.escalation import Escalation
from services.orchestrator.results import answer_text, commit_of
from services.orchestrator.review import Reviews
from services.orchestrator.store import TaskRow, new_id
from services.orchestrator.templates import Template

if TYPE_CHECKING:
    from services.orchestrator.service import Orchestrator

FINAL = ("succeeded", "failed", "timed_out", "cancelled")
#: gate kinds that run on the base commit too
COMPARING = ("new_findings", "no_drop", "test_first", "improvement", "no_removals")
#: seconds a gate task gets beyond its command's timeout (worktrees, a transfer)
GATE_SETUP_SECONDS = 120.0


class Workflow(Reviews, Escalation):
    def __init__(self, orch: "Orchestrator"):
        self.orch = orch
        self.store = orch.store
        self.config = orch.config

    # ---- helpers ------------------------------------------------------------------------

    def template(self, session_id: str) -> Template:
        row = self.store.session(session_id)
        return Template.model_validate(json.loads(row["template"]))

    def gates(self, session_id: str) -> dict[str, GateConfig]:
        row = self.store.session(session_id)
        return {k: GateConfig.model_validate(v) for k, v in json.loads(row["gates"]).items()}

    @staticmethod
    def roles(template: Template) -> list[str]:
        """Roles a plan may give subtasks: the escalation tiers below the architect (the
        utility tier runs commands, not instructions)."""
        return [r for r in template.escalation if r != "architect"] or ["worker"]

    def _task(self, session_id: str, **fields: Any) -> dict[str, Any]:
        row = self.store.session(session_id)
        base = {"id": new_id("task"), "cwd": row["repo"], "priority": row["priority"],
                "timeout_s": self.config.orchestrator.task_timeout, "role": "worker",
                "title": fields.get("kind", "task")}
        return {**base, **fields}

    def _add(self, session_id: str, *tasks: dict[str, Any]) -> None:
        self.store.add_tasks(session_id, list(tasks))
        for t in tasks:
            self.orch.publish_task_state(session_id, t["id"], t.get("state", "ready"))

    # ---- start --------------------------------------------------------------------------

    def first_tasks(self, session_id: str, template: Template, text: str, role: str,
                    repo: str) -> list[dict[str, Any]]:
        common = {"cwd": repo, "timeout_s": self.config.orchestrator.task_timeout}
        if template.single is not None:
            stage = template.single
            prompt = (prompts.analysis(text, stage.instructions) if stage.kind == "analyze"
                      else text)
            use_role = role if stage.kind == "run" else stage.role
            return [{"id": new_id("task"), "title": text.splitlines()[0][:80], "prompt": prompt,
                     "role": use_role, "kind": stage.kind, "isolate": int(stage.isolate),
                     **common}]
        assert template.plan is not None
        return [{"id": new_id("task"), "title": "plan", "kind": "plan",
                 "role": template.plan.role, "isolate": 1,
                 "prompt": prompts.plan(text, template.plan.instructions, self.roles(template)),
                 **common}]

    # ---- after a task ends ----------------------------------------------------------------

    def on_final(self, task: TaskRow) -> None:
        row = self.store.session(task.session_id)
        if row is None or row["state"] != "running":
            return
        handler = {
            "run": self._single_done, "analyze": self._single_done, "plan": self._plan_done,
            "replan": self._replan_done, "work": self._work_done, "gate": self._gate_done,
            "review": self._review_done, "resolve": self._resolve_done,
            "final_gate": self._final_gate_done,
        }[task.kind]
        handler(task)

    def _single_done(self, task: TaskRow) -> None:
        report = self._report(task.session_id)
        state = "succeeded" if task.state == "succeeded" else "failed"
        if task.kind == "analyze" and task.state == "succeeded":
            report["analysis"] = answer_text(task)
            verdict = self._analysis_check(task, report["analysis"])
            if verdict is not None:
                report["analysis_check"] = verdict.__dict__
                if not verdict.complete:
                    if self._ask_again(task, verdict):
                        return
                    state = "partial"
        detail = f"{task.kind} {task.state}"
        if task.meta.get("not_run"):
            detail += f": {task.meta['not_run']}"
        if task.state == "succeeded" and commit_of(task):
            detail += f"; branch {(task.result.get('data') or {}).get('branch', '')}"
        if state == "partial":
            detail += (f"; the analysis is still incomplete after {task.meta.get('rounds', 0)} "
                       f"more round(s): {completeness.Check(**report['analysis_check']).feedback()}")
        self.orch.finish_session(task.session_id, state, detail, report)

    def _analysis_check(self, task: TaskRow, text: str) -> completeness.Check | None:
        """The completeness gate of an analysis (None: its template asks for no sections)."""
        stage = self.template(task.session_id).single
        if stage is None or not stage.sections:
            return None
        row = self.store.session(task.session_id)
        commit = row["base_commit"] or "HEAD"
        try:
            tree = set(worktree.git(row["repo"], "ls-tree", "-r", "--name-only", commit)
                       .splitlines())
        except RuntimeError:
            tree = set()
        verdict = completeness.check(text, stage.sections, tree)
        self.store.record(task.session_id, "analysis_check", task.id,
                          detail="complete" if verdict.complete else verdict.feedback())
        return verdict

    def _ask_again(self, task: TaskRow, verdict: completeness.Check) -> bool:
        """Send an incomplete analysis back to its author with what is missing; False when
        its rounds are used up."""
        stage = self.template(task.session_id).single
        rounds = task.meta.get("rounds", 0) + 1
        if stage is None or rounds > stage.max_rounds:
            return False
        why = verdict.feedback()
        meta = {**task.meta, "rounds": rounds, "attempt_base": task.attempt,
                "feedback": task.meta.get("feedback", []) + [why]}
        if self.config.orchestrator.resume_on_retry:
            meta["resume_session"] = str((task.result.get("data") or {}).get("session_id") or "")
        meta.setdefault("first_prompt", task.prompt)
        prompt = (f"{meta['first_prompt']}\n\nFEEDBACK ON YOUR PREVIOUS ANSWER: the analysis is "
                  f"incomplete ({why}). Give the whole analysis again with a section for each "
                  f"of: {', '.join(stage.sections)}; in each, name the files or directories "
                  "of the repository it is about.")
        self.orch.reopen(task, f"analysis incomplete: {why}"[:500], prompt=prompt, meta=meta)
        return True

    # -- plan

    def _plan_done(self, task: TaskRow) -> None:
        sid = task.session_id
        if task.state != "succeeded":
            why = task.meta.get("not_run") or task.result.get("error") or ""
            self.orch.finish_session(sid, "failed", f"the architect's plan task {task.state}"
                                     + (f": {why}" if why else ""), self._report(sid))
            return
        template = self.template(sid)
        try:
            plan = parse_plan(answer_text(task), set(self.roles(template)))
        except PlanError as exc:
            row = self.store.session(sid)
            rounds = row["plan_rounds"] + 1
            self.store.update_session(sid, plan_rounds=rounds)
            self.store.record(sid, "plan_rejected", task.id, task.attempt_id, str(exc))
            assert template.plan is not None
            if rounds >= template.plan.max_rounds:
                self.orch.finish_session(sid, "failed", f"plan rejected: {exc}", self._report(sid))
                return
            self._add(sid, self._task(
                sid, title="plan (re-asked)", kind="plan", role=template.plan.role,
                prompt=prompts.plan(row["text"], template.plan.instructions, self.roles(template),
                                    error=str(exc))))
            return
        self.store.record(sid, "plan_accepted", task.id, task.attempt_id,
                          f"{len(plan.subtasks)} subtasks: "
                          + ", ".join(s.id for s in plan.subtasks))
        self.store.update_task(task, meta={**task.meta, "plan": plan.model_dump()})
        self._add_subtasks(sid, plan, prefix="", extra_deps=[])

    def _add_subtasks(self, sid: str, plan: Plan, prefix: str, extra_deps: list[str],
                      depth: int = 0) -> list[str]:
        order = topological_order(plan)
        ids = {s.id: new_id("task") for s in plan.subtasks}
        by_id = {s.id: s for s in plan.subtasks}
        escalation = self.template(sid).escalation
        tasks = []
        for key in order:
            s = by_id[key]
            deps = [ids[d] for d in s.depends_on] + extra_deps
            tier = escalation.index(s.role) if s.role in escalation else 0
            tasks.append(self._task(
                sid, id=ids[key], key=prefix + s.id, title=s.title, kind="work", role=s.role,
                prompt=prompts.work(s.title, s.prompt, s.acceptance_criteria, s.files, []),
                depends_on=deps, state="pending" if deps else "ready", tier=tier,
                meta={"subtask": s.model_dump(), "feedback": [], "rounds": 0,
                      "attempt_base": 0, "replan_depth": depth}))
        self._add(sid, *tasks)
        for t in tasks:  # extra deps may be accepted already
            if t["state"] == "pending":
                self._release(self.store.task(t["id"]))
        return [t["id"] for t in tasks]

    # -- work

    def _work_done(self, task: TaskRow) -> None:
        sid = task.session_id
        if task.state == "succeeded":
            gates = self.template(sid).gates
            configured = self.gates(sid)
            run = [g for g in gates if g in configured and configured[g].command]
            skipped = [g for g in gates if g not in run]
            if skipped:
                self.store.record(sid, "gates_skipped", task.id, detail=", ".join(skipped)
                                  + " (no command configured)")
            if run:
                self._add(sid, *[self._gate_task(sid, g, configured[g], commit_of(task),
                                                 kind="gate", parent=task) for g in run])
            else:
                self._after_gates(task)
            return
        self._escalate(task)

    def _gate_task(self, sid: str, name: str, gate: GateConfig, base: str, kind: str,
                   parent: TaskRow | None) -> dict[str, Any]:
        subject = parent.key or parent.title if parent else "session"
        # the comparing kinds also run on the commit the work started from
        compare_to = (self._base_of(parent) if parent else
                      self.store.session(sid)["base_commit"]) if gate.kind in COMPARING else ""
        run = gate_run(name, gate, compare_to if compare_to != base else "")
        runs = 2 * gate.rounds if gate.kind == "improvement" else 2 if run.compare_to else 1
        timeout = gate.timeout * runs + GATE_SETUP_SECONDS
        return self._task(sid, title=f"gate {name}: {subject}", kind=kind, role="utility",
                          executor="gate", prompt=run.model_dump_json(), base=base,
                          timeout_s=timeout, key=f"{subject}:{name}",
                          parent=parent.id if parent else "",
                          meta={"gate": name, "round": parent.attempt if parent else 0})

    def _gate_done(self, task: TaskRow) -> None:
        parent = self.store.task(task.parent)
        if parent is None:
            return
        siblings = [t for t in self.store.tasks(task.session_id)
                    if t.kind == "gate" and t.parent == parent.id
                    and t.meta.get("round") == task.meta.get("round")]
        if any(t.state not in FINAL for t in siblings):
            return
        failed = [t for t in siblings if t.state != "succeeded"]
        if not failed:
            self._after_gates(parent)
            return
        not_run = [t for t in failed if t.meta.get("not_run")]
        if not_run:  # no verdict, so nothing to send back: the work cannot be checked
            why = "; ".join(f"gate {t.meta['gate']} could not run ({t.meta['not_run']})"
                            for t in not_run)
            self.orch.move(parent, "failed", why[:500])
            self._give_up(parent, "")
            return
        feedback = []
        for t in failed:
            out = (t.result.get("stdout", "") + t.result.get("stderr", ""))[-3000:]
            feedback.append(f"quality gate {t.meta['gate']} failed "
                            f"({t.meta.get('verdict', t.state)}); its output ends with:\n{out}")
        self._send_back(parent, feedback, f"gate {', '.join(t.meta['gate'] for t in failed)} failed")

    def _after_gates(self, work: TaskRow) -> None:
        review = self.template(work.session_id).work.review
        if review is None:
            self._accept(work)
            return
        self._add_review(work, review.role)

    def _send_back(self, work: TaskRow, feedback: list[str], why: str) -> None:
        template = self.template(work.session_id)
        limit = template.work.review.max_rounds if template.work.review else 2
        rounds = work.meta.get("rounds", 0) + 1
        if rounds > limit:
            self.store.record(work.session_id, "send_back_exhausted", work.id, detail=why)
            self.orch.move(work, "failed", f"{why}; {limit} round(s) of changes used up")
            self._escalate(work)
            return
        meta = {**work.meta, "rounds": rounds, "feedback": work.meta.get("feedback", []) + feedback,
                "attempt_base": work.attempt}  # a send-back does not use up the retries
        if self.config.orchestrator.resume_on_retry:  # the worker keeps its context
            meta["resume_session"] = str((work.result.get("data") or {}).get("session_id") or "")
        sub = meta.get("subtask", {})
        prompt = prompts.work(work.title, sub.get("prompt", work.prompt),
                              sub.get("acceptance_criteria", []), sub.get("files", []),
                              meta["feedback"][-6:])
        self.orch.reopen(work, f"sent back: {why}", prompt=prompt, meta=meta)

    # -- dependencies

    def _accept(self, work: TaskRow, note: str = "") -> None:
        self.store.update_task(work, meta={**work.meta, "accepted": True,
                                           **({"note": note} if note else {})})
        self.store.record(work.session_id, "accepted", work.id, detail=note or work.key)
        for t in self.store.tasks(work.session_id, states=("pending",)):
            if work.id in t.depends_on:
                self._release(t)
        self._maybe_merge(work.session_id)

    def _release(self, task: TaskRow | None) -> None:
        """A pending task whose dependencies are all accepted becomes ready, based on them."""
        if task is None or task.state != "pending":
            return
        deps = [self.store.task(d) for d in task.depends_on]
        if not all(d is not None and d.meta.get("accepted") for d in deps):
            return
        commits = [(d.key or d.id, commit_of(d)) for d in deps if d and commit_of(d)]
        base = ""
        if len(commits) == 1:
            base = commits[0][1]
        elif len(commits) > 1:
            row = self.store.session(task.session_id)
            result = merge.merge_into(row["repo"], f"ccaa/{task.session_id}/{task.id}-base",
                                      commits[0][1], commits[1:], self._merge_root(task.session_id))
            if result.conflict is not None:
                self.orch.move(task, "failed", f"its dependencies conflict in "
                               f"{', '.join(result.conflict.files)}")
                self._escalate(task)
                return
            base = result.head
        self.orch.move(task, "ready", "dependencies accepted", base=base)

    def _cancel_dependents(self, task: TaskRow, why: str) -> None:
        for t in self.store.tasks(task.session_id):
            if task.id in t.depends_on and t.state not in FINAL:
                self.orch.move(t, "cancelled", why)
                self._cancel_dependents(t, f"dependency {t.key or t.id} cancelled")

    def _base_of(self, task: TaskRow) -> str:
        return task.base or self.store.session(task.session_id)["base_commit"]

    def _merge_root(self, sid: str) -> Path:
        return self.config.data_path() / "merges" / sid

    # -- merge, final gates, summary

    @staticmethod
    def _work_settled(t: TaskRow) -> bool:
        """Accepted, replaced by a re-plan, or ended for good (succeeded-but-unaccepted
        work is still in its gates or review)."""
        return bool(t.meta.get("accepted") or t.meta.get("replaced_by")
                    or t.state in ("failed", "timed_out", "cancelled"))

    def _maybe_merge(self, sid: str) -> None:
        tasks = self.store.tasks(sid)
        work = [t for t in tasks if t.kind == "work"]
        busy = [t for t in tasks if t.kind in ("replan", "review", "gate", "plan")
                and t.state not in FINAL]
        if not work or busy or not all(self._work_settled(t) for t in work):
            return
        if any(t.kind == "resolve" and t.state not in FINAL for t in tasks):
            return
        self._merge(sid)

    def _merge(self, sid: str) -> None:
        row = self.store.session(sid)
        template = self.template(sid)
        accepted = [t for t in self.store.tasks(sid) if t.kind == "work" and t.meta.get("accepted")
                    and commit_of(t) and not t.meta.get("merge_failed")]
        accepted.sort(key=lambda t: t.created_at)
        head = row["base_commit"]
        if template.merge and accepted and row["base_commit"]:
            result = merge.merge_into(row["repo"], f"ccaa/{sid}/result", row["base_commit"],
                                      [(t.key or t.id, commit_of(t)) for t in accepted],
                                      self._merge_root(sid))
            head = result.head
            self.store.update_session(sid, report={**json.loads(row["report"]),
                                                   "branch": result.branch, "head": head})
            if result.conflict is not None:
                c = result.conflict
                culprit = next(t for t in accepted if (t.key or t.id) == c.branch)
                self.store.record(sid, "merge_conflict", culprit.id,
                                  detail=f"{c.branch}: {', '.join(c.files)}")
                self._add(sid, self._task(
                    sid, title=f"resolve merge: {c.branch}", kind="resolve", role="manager",
                    parent=culprit.id, base=head, key=f"{c.branch}:merge",
                    prompt=prompts.resolve(c.branch, c.commit, c.files, c.output)))
                return
            self.store.record(sid, "merged", detail=f"{result.branch} at {head[:12]}: "
                              + ", ".join(result.merged))
        gates = self.gates(sid)
        final = [g for g in template.final_gates if g in gates and gates[g].command]
        if final and accepted and head and not any(t.kind == "final_gate"
                                                   for t in self.store.tasks(sid)):
            self._add(sid, *[self._gate_task(sid, g, gates[g], head, "final_gate", None)
                             for g in final])
            return
        self._finish(sid)

    def _resolve_done(self, task: TaskRow) -> None:
        sid = task.session_id
        culprit = self.store.task(task.parent)
        row = self.store.session(sid)
        if task.state == "succeeded" and commit_of(task):
            merge.merge_into(row["repo"], f"ccaa/{sid}/result", row["base_commit"],
                             [(f"resolution of {culprit.key if culprit else '?'}",
                               commit_of(task))], self._merge_root(sid))
        elif culprit is not None:
            self.store.update_task(culprit, meta={**culprit.meta, "merge_failed": True})
        self._merge(sid)

    def _final_gate_done(self, task: TaskRow) -> None:
        tasks = [t for t in self.store.tasks(task.session_id) if t.kind == "final_gate"]
        if all(t.state in FINAL for t in tasks):
            self._finish(task.session_id)

    def _finish(self, sid: str) -> None:
        tasks = self.store.tasks(sid)
        work = [t for t in tasks if t.kind == "work" and not t.meta.get("replaced_by")]
        done = [t for t in work if t.meta.get("accepted") and not t.meta.get("merge_failed")]
        missing = [t for t in work if t not in done]
        gates_failed = [t for t in tasks if t.kind == "final_gate" and t.state != "succeeded"]
        report = self._report(sid)
        if not done:
            state = "failed"
        elif missing or gates_failed:
            state = "partial"
        else:
            state = "succeeded"
        parts = [f"{len(done)}/{len(work)} subtasks merged"]
        if missing:
            parts.append("not done: " + ", ".join(
                f"{t.key} ({t.state}" + (f": {t.meta['gave_up']}" if t.meta.get("gave_up")
                                         else "") + ")" for t in missing))
        if gates_failed:
            parts.append("final gates failed: " + ", ".join(t.meta["gate"] for t in gates_failed))
        self.orch.finish_session(sid, state, "; ".join(parts), report)

    def cleanup(self, sid: str, row: Any) -> None:
        """The session ended: remove its worktrees (merge and agent ones on this host) and
        the branches of tasks that only read (gates, reviews, plans), merged bases, and work
        that changed nothing; the other work branches and the result branch stay. The git
        work runs in a thread, so ending a session with hundreds of tasks (a cancel)
        answers at once. (``row``: the session's, read as it ended.)"""
        if row is None or not row["base_commit"]:
            return
        tasks = self.store.tasks(sid)
        scratch = [f"ccaa/{sid}/{t.id}" for t in tasks if t.kind not in ("work", "run", "resolve")
                   or _changed_nothing(t)]
        scratch += [f"ccaa/{sid}/{t.id}-base" for t in tasks if t.kind == "work"]
        roots = [str(self.config.data_path() / "merges"),
                 str(self.config.data_path() / "worktrees")]
        self.orch.peer.spawn(self._cleanup(sid, row["repo"], roots, scratch))

    async def _cleanup(self, sid: str, repo: str, roots: list[str], scratch: list[str]) -> None:
        def work() -> int:
            removed = sum(len(worktree.remove_session(repo, sid, root)) for root in roots)
            merge.delete_branches(repo, scratch)
            return removed

        try:
            removed = await asyncio.to_thread(work)
        except (merge.GitError, RuntimeError, OSError) as exc:
            self.store.record(sid, "cleanup_failed", detail=str(exc)[:500])
            return
        self.store.record(sid, "cleanup", detail=f"{removed} worktree(s) removed")

    def judge_gate(self, task: TaskRow, result: dict[str, Any]) -> Verdict:
        gate = self.gates(task.session_id).get(task.meta.get("gate", ""))
        if gate is None:
            return Verdict(result.get("outcome") == "succeeded", "unknown gate")
        verdict = evaluate(gate, result)
        if not verdict.available:
            self.store.record(task.session_id, "gate_not_available", task.id,
                              detail=f"{task.meta.get('gate')}: {verdict.detail}"[:500])
        return verdict

    def _report(self, sid: str) -> dict[str, Any]:
        return self.orch.report(sid)


def _changed_nothing(task: TaskRow) -> bool:
    """A finished task whose last attempt committed no change: its branch is the base."""
    data = task.result.get("data") or {}
    return task.state in ("succeeded", "failed", "timed_out", "cancelled") \
        and "files_changed" in data and not data["files_changed"]
