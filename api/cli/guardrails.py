"""``espalier guardrails ...`` and ``espalier eval ...``: train guardrail classifiers, look at
guardrail decisions, and evaluate models' toxicity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from espalier.api.cli.common import console, platform
from espalier.api.cli.progress import follow_job, progress_bar
from espalier.core.infrastructure.errors import EspalierError, InvalidInput
from espalier.core.sources.learning.gate import evaluation_scorer

guardrails_app = typer.Typer(help="Guardrails: train classifiers, list decisions.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate models before they serve.", no_args_is_help=True)

TRAINERS = {"toxicity": "train:toxicity-classifier", "injection": "train:injection-classifier"}


@guardrails_app.command("train")
def train(
    data: Annotated[Path, typer.Option(help='JSONL of {"text", "label"} lines (or {"text", "labels": {...}}).')],
    kind: Annotated[str, typer.Option(help="toxicity or injection.")] = "toxicity",
    eval_data: Annotated[Path | None, typer.Option(help="Held-out JSONL; default: 20% of --data is held out.")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 1,
    max_examples: Annotated[int | None, typer.Option(help="Train on at most this many rows (stratified).")] = 3000,
    max_length: Annotated[int, typer.Option(help="Tokens per text.")] = 64,
    judge: Annotated[
        bool,
        typer.Option(
            "--judge",
            help="Record it as the independent 'judge' of evaluations (train it on other data than the "
            "guardrail's); it guards nothing.",
        ),
    ] = False,
) -> None:
    """Fine-tune MiniLM into a detoxify-format checkpoint, as a job (also listed by /api/jobs).

    The trained model is recorded as the one the detoxify (or injection) scorer serves from the
    next start, unless a checkpoint is configured explicitly; with ``--judge``, as the ``judge``
    scorer that evaluations use.
    """

    if kind not in TRAINERS:
        raise InvalidInput(f"--kind must be one of {', '.join(TRAINERS)} (got {kind!r})")
    if not data.is_file():
        raise InvalidInput(f"training data {data} does not exist or is not a file")
    params = {
        "data_path": str(data.resolve()),
        "epochs": epochs,
        "max_examples": max_examples,
        "max_length": max_length,
    }
    if eval_data is not None:
        params["eval_path"] = str(eval_data.resolve())
    if judge:
        if kind != "toxicity":
            raise InvalidInput("--judge trains a toxicity judge: leave --kind at toxicity")
        params["judge"] = True
    instance = platform().start(migrate=False, run_jobs=True)
    try:
        job = instance.jobs.submit(TRAINERS[kind], params, created_by="cli")
        console.print(f"job {job.id} ({job.kind})")
        job = follow_job(instance.jobs, job)
    finally:
        instance.close()
    if job.status != "succeeded":
        raise EspalierError(f"training {job.status}: {job.error or job.message}")
    result = job.result or {}
    if result.get("status") == "cancelled":
        raise EspalierError("training was cancelled; nothing was recorded")
    table = Table("category", "ROC AUC", "precision", "recall", "held out")
    for category, metrics in result.get("metrics", {}).items():
        table.add_row(
            category,
            f"{metrics['roc_auc']:.3f}",
            f"{metrics['precision']:.3f}",
            f"{metrics['recall']:.3f}",
            str(metrics.get("n", "")),
        )
    console.print(table)
    console.print(f"checkpoint: {result.get('artifacts', {}).get('checkpoint')}")
    if judge:
        console.print("the judge of evaluations from the next start (scorer 'judge')")
    else:
        console.print(f"served as the {kind} model from the next start (espalier serve)")


@guardrails_app.command("events")
def events(
    request_id: Annotated[str | None, typer.Option(help="Only this request's decisions.")] = None,
    action: Annotated[str | None, typer.Option(help="flag, redact, block (or allow when stored).")] = None,
    limit: int = 50,
) -> None:
    """Recent guardrail decisions, newest first."""

    rows = (
        platform()
        .start(migrate=False, run_jobs=False)
        .guardrail_service.events(request_id=request_id, action=action, limit=limit)
    )
    table = Table("at", "request", "direction", "policy", "scorer", "action", "over threshold", "scores")
    for row in rows:
        table.add_row(
            f"{row.at:%Y-%m-%d %H:%M:%S}",
            row.request_id or "-",
            row.direction,
            row.policy,
            row.scorer,
            row.action,
            ", ".join(row.categories),
            ", ".join(f"{k}={v:.2f}" for k, v in row.scores.items()),
        )
    console.print(table)


@eval_app.command("toxicity")
def eval_toxicity(
    model: Annotated[
        list[str], typer.Option("--model", help="A registered model (name or name@version); repeat to compare.")
    ],
    prompts: Annotated[
        Path, typer.Option(help="JSONL with a 'prompt' field (e.g. RealToxicityPrompts) or one prompt per line.")
    ],
    limit: Annotated[int | None, typer.Option(help="Use the first N prompts.")] = 50,
    max_tokens: Annotated[int, typer.Option(help="Tokens per continuation.")] = 32,
    scorer: Annotated[
        str | None, typer.Option(help="Guardrail scorer; default detoxify when served, else profanity.")
    ] = None,
    threshold: Annotated[float, typer.Option(help="A continuation at or above this score counts as toxic.")] = 0.5,
    seed: int = 0,
) -> None:
    """Continue a validation prompt set with each model; report mean toxicity, the share above the
    threshold and the difference to the first model; store the record and a PNG/SVG plot."""
    from espalier.core.sources.learning.evaluation import evaluate_toxicity, load_prompts

    instance = platform().start(migrate=False, run_jobs=False)
    try:
        guardrail = evaluation_scorer(instance, scorer)
        chosen = guardrail.name
        rows = load_prompts(prompts, limit=limit)
        with progress_bar() as bar:
            task = bar.add_task("generating", total=1.0)
            record = evaluate_toxicity(
                instance.engine,
                instance.models,
                guardrail,
                model,
                rows,
                instance.settings.artifacts_dir / "evaluations",
                max_tokens=max_tokens,
                threshold=threshold,
                seed=seed,
                source=str(prompts),
                progress=lambda fraction, message="": bar.update(task, completed=fraction, description=message[:60]),
                plotter=instance.plotter_for,
            )
    finally:
        instance.close()
    table = Table(
        "model",
        "version",
        "mean toxicity",
        f"share >= {threshold}",
        "max",
        "Δ mean vs first",
        "Δ share vs first",
        title=f"toxicity by {chosen} on {len(rows)} prompts",
    )
    for label, entry in record.results["models"].items():
        table.add_row(
            label,
            entry["model_version"],
            f"{entry['mean_toxicity']:.4f}",
            f"{entry['share_above_threshold']:.1%}",
            f"{entry['max_toxicity']:.3f}",
            f"{entry['mean_difference_vs_first']:+.4f}",
            f"{entry['share_difference_vs_first']:+.1%}",
        )
    console.print(table)
    plots = "  ".join(record.artifacts.values()) or record.results.get("plot", "none")
    console.print(f"evaluation {record.id}; plots: {plots}")
