"""The promotion approval: Airflow's HITL ``ApprovalOperator`` with a required reason, recorded in the ledger.

Built by :func:`mlops_airflow.blocks.approval` (imported only then: the HITL operator is not needed to
parse a DAG without approval). A person answers in the UI (*Browse -> Required Actions*) or over the REST
API (``PATCH /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/approve_promotion/-1/hitlDetails`` with
``{"chosen_options": ["Approve" | "Reject"], "params_input": {"reason": "..."}}``).

- Approve: promotion and deploy proceed; the ledger records ``approved`` with who and why.
- Reject: promotion and deploy are skipped (the champion keeps serving); the ledger records ``declined``.
- No reason: the task fails (nothing is promoted); the form marks the field required.
- No answer within the spec's ``gate.approval.timeout_hours``: the ledger records ``approval_timeout`` and
  the run fails at once (no retry: a retry would ask again and double the wait).
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException

REASON = "reason"


def reason_param() -> dict[str, Any]:
    """The form's one field: why (at least one non-blank character; an answer without it is refused).

    Its default is ``None`` (allowed by the schema): Airflow validates a task's params when the task starts,
    and a default that breaks ``minLength`` would fail the task before it asks anything.
    """
    return {
        REASON: Param(
            None,
            type=["string", "null"],
            minLength=1,
            pattern=r"\S",
            title="Reason",
            description="Why you approve or reject this version (kept in the promotion ledger).",
        )
    }


class PromotionApproval(ApprovalOperator):
    """Approve or reject a registered version's promotion; the decision, who and why go to the ledger.

    Args:
        pipeline: The pipeline whose registered version (``register_model``'s XCom) is judged.
        **kwargs: ``ApprovalOperator`` arguments (subject, body, response_timeout, assigned_users).
    """

    def __init__(self, *, pipeline: str, **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's run-form params (applied as defaults): not this form's fields
        super().__init__(params=reason_param(), **kwargs)
        self.pipeline = pipeline

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        """Record the answer (or the timeout), then let the operator approve or skip downstream."""
        if "error" in event:
            if event.get("error_type") == "timeout":
                self._record(context, "approval_timeout", "system: no answer", "nobody answered in time")
                raise AirflowFailException(f"promotion approval timed out: {event.get('error')}")
            return super().execute_complete(context=context, event=event)
        reason = str((event.get("params_input") or {}).get(REASON) or "").strip()
        who = event.get("responded_by_user") or {}
        person = f"{who.get('name') or who.get('id') or 'unknown'} (airflow user {who.get('id')})"
        if not reason:
            raise AirflowFailException(f"{person} answered without a reason: a reason is required")
        chosen = (event.get("chosen_options") or [None])[0]
        action = "approved" if chosen == self.APPROVE else "declined"
        self._record(context, action, person, reason)
        return super().execute_complete(context=context, event=event)

    def _record(self, context: Any, action: str, person: str, reason: str) -> None:
        from mlops_airflow.blocks import actor, call
        from tasks.registry import record_outcome
        from tasks.settings import get_settings
        from tasks.spec import load_spec

        version = (context["ti"].xcom_pull(task_ids="register_model") or {}).get("version")
        name = load_spec(self.pipeline).registered_model_name
        who = f"{person} via {actor(context)}"
        call(record_outcome, get_settings(), name, action, reason, str(version) if version else None, who)
