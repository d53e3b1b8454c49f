"""Built-in plugin: constitutional AI labels (job ``cai:labels``).

The job samples the model's answers to prompts, has the model critique and revise each by one
principle of the constitution (``espalier/core/sources/learning/constitution_default.toml``, or
``ESPALIER_CONSTITUTION_PATH``), and stores each revision preferred to its original as an AI
preference pair (``ai_pairs``), apart from human pairs. The reward trainer takes them at
``ESPALIER_AI_PAIR_WEIGHT``.

Parameters: ``prompts`` (a list of strings; default the shipped evaluation prompts), ``limit``,
``model`` (a name or ``name@version``; default the default model), ``principles`` (names; default
all), ``max_tokens`` (64), ``temperature`` (0.7), ``seed`` (0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from espalier import hookimpl
from espalier.core.infrastructure.contracts import JobKind
from espalier.core.sources.learning.constitution import (
    JOB_KIND,
    check_params,
    constitution_path,
    critique_and_revise,
    load_constitution,
    summary,
)

if TYPE_CHECKING:
    from espalier.core.platform import Platform


class ConstitutionalLabeller:
    """Runs ``cai:labels`` jobs on the platform that registered it."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def __call__(self, job: Any) -> dict[str, Any]:
        platform = self.platform
        params = check_params(dict(job.params))
        constitution = load_constitution(constitution_path(platform.settings))
        principles = constitution.pick(params.get("principles"))
        model_id = params.get("model") or platform.settings.default_model
        model, version = platform.models.load(model_id)
        job.log(
            f"constitution '{constitution.name}' ({len(principles)} principles), model {model_id} "
            f"version {version.label}, {len(params['prompts'])} prompts"
        )
        items = critique_and_revise(
            model,
            params["prompts"],
            principles,
            max_tokens=int(params.get("max_tokens", 64)),
            temperature=float(params.get("temperature", 0.7)),
            seed=int(params.get("seed", 0)),
            progress=job.progress,
            cancelled=job.cancelled,
        )
        stored = platform.pairs.add_ai(
            (
                {
                    "prompt": i.prompt,
                    "chosen": i.revision,
                    "rejected": i.original,
                    "principle": i.principle,
                    "critique": i.critique,
                }
                for i in items
                if i.usable
            ),
            model=f"{model_id.partition('@')[0]}@{version.label}",
            constitution=constitution.name,
            job_id=job.job_id,
        )
        result = {
            **summary(items),
            **stored,
            "constitution": constitution.name,
            "model_version": version.label,
            "ai_pairs_total": platform.pairs.ai_count(),
            "weight": platform.settings.ai_pair_weight,
        }
        job.log(
            f"stored {stored['added']} AI pairs ({result['usable']} usable of {len(items)}; a revision equal to "
            "its original or empty is dropped)"
        )
        job.progress(1.0, f"{stored['added']} AI pairs")
        return result


@hookimpl
def register_job_kinds(register, platform):
    register(
        JobKind(
            JOB_KIND,
            run=ConstitutionalLabeller(platform),
            description=(
                "Constitutional AI: the model critiques and revises its own answers by the constitution's principles; "
                "revised-over-original pairs are stored as AI preference labels, apart from human ones"
            ),
        )
    )
