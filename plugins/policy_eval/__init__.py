"""Built-in plugin: the ``eval:policy`` job, which evaluates a candidate version of a chat model
against the serving one (reward, toxicity, KL from the reference, task checks) and stores the
report with its gate; promotion reads that gate (see :mod:`espalier.core.sources.learning.gate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from espalier import hookimpl
from espalier.core.infrastructure.contracts import JobKind
from espalier.core.sources.learning import gate as policy_evaluation

if TYPE_CHECKING:
    from espalier.core.platform import Platform


class PolicyEvaluationJob:
    """Runs ``eval:policy`` jobs on the platform that registered it."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def __call__(self, job: Any) -> dict[str, Any]:
        record = policy_evaluation.run(
            self.platform,
            dict(job.params),
            out_dir=Path(job.artifact_dir),
            progress=job.progress,
            cancelled=job.cancelled,
            job_id=job.job_id,
        )
        verdict = record.results["gate"]
        job.log(
            f"evaluation {record.id}: gate {'passed' if verdict['passed'] else 'failed'}"
            + "".join(f"\n- {failure}" for failure in verdict["failures"])
        )
        report = policy_evaluation.summary(record)
        report["created_at"] = record.created_at.isoformat()
        return {"evaluation": record.id, **report}


@hookimpl
def register_job_kinds(register, platform):
    register(
        JobKind(
            policy_evaluation.JOB_KIND,
            run=PolicyEvaluationJob(platform),
            description=(
                "Evaluate a candidate model version against the serving one: mean reward, toxicity, KL from the "
                "reference and task checks, with a promotion gate"
            ),
        )
    )
