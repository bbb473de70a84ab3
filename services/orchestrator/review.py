"""A manager's review of each finished subtask, mixed into the Workflow: the verdict
(approve / changes requested) decides; a review that fails or cannot be read is asked
again, then a tier up; work is never accepted unreviewed."""

from __future__ import annotations

import json

from services.orchestrator import merge, prompts
from services.orchestrator.plan import extract_json
from services.orchestrator.results import answer_text, commit_of
from services.orchestrator.store import TaskRow


class Reviews:
    """Mixin for services.orchestrator.workflow.Workflow."""

    def _add_review(self, work: TaskRow, role: str, problem: str = "", asked: int = 0) -> None:
        row = self.store.session(work.session_id)
        sub = work.meta.get("subtask", {})
        diff = merge.diff(row["repo"], self._base_of(work), commit_of(work)) if commit_of(work) else ""
        self._add(work.session_id, self._task(
            work.session_id, title=f"review: {work.key}", kind="review", role=role,
            parent=work.id, base=commit_of(work), key=f"{work.key}:review",
            meta={"asked": asked},
            prompt=prompts.review(work.title, sub.get("prompt", work.prompt),
                                  sub.get("acceptance_criteria", []), diff or "(no changes)",
                                  problem=problem)))

    def _review_done(self, review: TaskRow) -> None:
        work = self.store.task(review.parent)
        if work is None:
            return
        if review.state != "succeeded":
            self.store.record(review.session_id, "review_unavailable", work.id,
                              detail=f"review by {review.role} {review.state}")
            self._review_elsewhere(work, review, f"the review by a {review.role} {review.state}")
            return
        try:
            verdict = json.loads(extract_json(answer_text(review)))
            decision = str(verdict.get("verdict", "")).lower()
            reasons = [str(r) for r in verdict.get("reasons", [])]
        except (ValueError, AttributeError):
            decision, reasons = "", []
        self.orch.metrics.reviews.labels(decision if decision in ("approve", "changes_requested")
                                         else "unreadable").inc()
        # the verdict and each of its reasons, kept with the review (report, ccaa show)
        self.store.update_task(review, meta={**review.meta, "review_verdict": decision
                                             or "unreadable", "reasons": reasons[:20]})
        if decision == "approve":
            self.store.record(review.session_id, "review_approved", work.id,
                              detail="; ".join(reasons)[:500])
            self._accept(work)
        elif decision == "changes_requested":
            self._send_back(work, [f"reviewer: {r}" for r in reasons] or ["reviewer: changes requested"],
                            "review requested changes")
        else:
            self.store.record(review.session_id, "review_unreadable", work.id,
                              detail=answer_text(review)[:300])
            problem = ('it held no JSON object with "verdict" set to "approve" or '
                       '"changes_requested"')
            if review.meta.get("asked", 0) < 1:  # ask the same reviewer once more
                self._add_review(work, review.role, problem=problem,
                                 asked=review.meta.get("asked", 0) + 1)
            else:
                self._review_elsewhere(work, review, f"the {review.role}'s review was "
                                       f"unreadable twice ({problem})")

    def _review_elsewhere(self, work: TaskRow, review: TaskRow, why: str) -> None:
        """No verdict from this reviewer: ask the next tier up; with none left the work is
        not accepted (it never merges unreviewed)."""
        ladder = self.template(work.session_id).escalation
        above = ladder[ladder.index(review.role) + 1:] if review.role in ladder else []
        if above:
            self.store.record(work.session_id, "review_escalated", work.id,
                              detail=f"{why}; asking the {above[0]}")
            self._add_review(work, above[0])
            return
        self.orch.move(work, "failed", f"no review verdict: {why}")
        self._give_up(work, "it was never reviewed")
