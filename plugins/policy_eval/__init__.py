"""Built-in plugin: the ``eval:policy`` job, which evaluates a candidate version of a chat model
against the serving one (reward, toxicity, KL from the reference, task checks) and stores the
report with its gate; promotion reads that gate (see :mod:`espalier.core.sources.learning.gate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from espalier import hookimpl
from espalier.core.infrastructure.contracts import JobKind
from espalier.core.infrastructure.errors import Unavailable
from espalier.core.sources.learning import gate as policy_evaluation


class PolicyEvaluationJob:
    def __init__(self) -> None:
        self.platform: Any = None

    def bind(self, platform: Any) -> None:
        self.platform = platform

    def __call__(self, job: Any) -> dict[str, Any]:
        if self.platform is None:
            raise Unavailable("policy evaluation runs inside a started platform (espalier serve)")
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
def register_job_kinds(register):
    # One runner per platform (register is called once per platform); startup binds it.
    register(
        JobKind(
            policy_evaluation.JOB_KIND,
            run=PolicyEvaluationJob(),
            description=(
                "Evaluate a candidate model version against the serving one: mean reward, toxicity, KL from the "
                "reference and task checks, with a promotion gate"
            ),
        )
    )


@hookimpl
def startup(platform):
    if policy_evaluation.JOB_KIND in platform.job_kinds:
        runner = platform.job_kinds.get(policy_evaluation.JOB_KIND).run
        if isinstance(runner, PolicyEvaluationJob):
            runner.bind(platform)
