"""``espalier models evaluate|promote|rollback|history``: a candidate version is evaluated against
the serving one, then promoted (gate permitting) or rolled back. The CLI acts as the local
operator: its audit entries have no key, and it may force a promotion (with a reason)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from espalier.api.cli.common import console, platform, print_json


def _models():

    instance = platform()
    instance.models.sync_builtins()  # the shipped models exist before the server first ran
    return instance.models


def register(models_app: typer.Typer) -> None:
    @models_app.command("evaluate")
    def models_evaluate(
        name: Annotated[str, typer.Argument(help="The model whose serving version is the baseline.")],
        candidate: Annotated[str, typer.Option(help="The version label to evaluate.")],
        prompts: Annotated[
            Path | None,
            typer.Option(help="JSONL with a 'prompt' field or one prompt per line; default: the shipped set."),
        ] = None,
        limit: Annotated[int | None, typer.Option(help="Use the first N prompts.")] = None,
        max_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 32,
        seed: int = 0,
        scorer: Annotated[
            str | None, typer.Option(help="Toxicity scorer that judges (never the one the update optimised).")
        ] = None,
        prompt_format: Annotated[
            list[str] | None, typer.Option("--format", help="chat or text (repeatable); default: chat + trained.")
        ] = None,
        min_prompts: Annotated[int | None, typer.Option(help="Gate: fewest prompts it judges on.")] = None,
        require_improvement: Annotated[
            bool | None, typer.Option(help="Gate: reward up or toxicity down beyond noise.")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Compare NAME@CANDIDATE with the serving version: reward, toxicity, KL, task checks, gate."""
        from espalier.api.cli.progress import progress_bar
        from espalier.core.sources.learning import gate as policy_evaluation

        instance = platform().start(migrate=False, run_jobs=False)
        try:
            params: dict = {"model": name, "candidate": candidate, "max_tokens": max_tokens, "seed": seed}
            if prompts is not None:
                params["prompts_file"] = str(prompts)
            if limit is not None:
                params["limit"] = limit
            if scorer:
                params["scorer"] = scorer
            if prompt_format:
                params["formats"] = list(prompt_format)
            gate = {"min_prompts": min_prompts, "require_improvement": require_improvement}
            params["gate"] = {k: v for k, v in gate.items() if v is not None}
            out = instance.settings.artifacts_dir / "evaluations"
            with progress_bar() as bar:
                task = bar.add_task("evaluating", total=1.0)
                record = policy_evaluation.run(
                    instance,
                    params,
                    out_dir=out,
                    progress=lambda fraction, message="": bar.update(task, completed=fraction, description=message),
                )
        finally:
            instance.close()
        report = policy_evaluation.summary(record)
        if as_json:
            print_json(report)
            return
        table = Table("", "serving", "candidate", title=f"{name}: {record.models[1]} against {record.models[0]}")
        for key in ("mean_reward", "mean_toxicity", "share_above_threshold", "kl", "task_accuracy"):
            values = [report["current"][key], report["candidate_results"][key]]
            table.add_row(key, *("-" if v is None else f"{v:.4f}" for v in values))
        console.print(table)
        gate = report["gate"]
        for prompt_format, checks in (gate.get("checks") or {}).items():
            for check in ("reward", "toxicity", "tasks"):
                if check in checks:
                    c = checks[check]
                    console.print(
                        f"{prompt_format}: {check} difference {c['mean']:+.4f} "
                        f"[{c['low']:+.4f}, {c['high']:+.4f}] over {c['n']}"
                    )
        console.print(
            f"gate: {'[green]passed[/]' if gate['passed'] else '[red]failed[/]'}"
            + "".join(f"\n  - {f}" for f in gate["failures"])
        )
        console.print(f"evaluation {record.id}; plot: {record.artifacts.get('png')}")

    @models_app.command("promote")
    def models_promote(
        name: str,
        version: Annotated[str, typer.Argument(help="The version label to serve.")],
        evaluation: Annotated[
            str | None, typer.Option(help="The evaluation that justifies it (default: its latest).")
        ] = None,
        force: Annotated[bool, typer.Option(help="Promote without a passed evaluation (needs --reason).")] = False,
        reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")] = "",
    ) -> None:
        """Serve VERSION from the next request on (running servers switch without a restart)."""

        info = _models().promote(name, version, evaluation=evaluation, force=force, reason=reason)
        console.print(f"{name} now serves version {info.serving_version}")

    @models_app.command("rollback")
    def models_rollback(name: str, reason: Annotated[str, typer.Option(help="Why (audited).")] = "") -> None:
        """Serve the version that served before the current one (repeat to walk back further)."""

        info = _models().rollback(name, reason=reason)
        console.print(f"{name} now serves version {info.serving_version}")

    @models_app.command("history")
    def models_history(name: str) -> None:
        """Promotions and rollbacks of NAME, newest first."""

        table = Table("at", "action", "version", "active", "evaluation", "reason")
        for change in _models().history(name):
            table.add_row(
                change.at.strftime("%Y-%m-%d %H:%M:%S"),
                change.action + (" (forced)" if change.forced else ""),
                change.label,
                "yes" if change.active else "",
                change.evaluation_id or "",
                change.reason,
            )
        console.print(table)
