"""``espalier pairs`` (export, import, summary) and ``espalier reward`` (list, train)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from espalier.api.cli.common import console, err, platform, print_json
from espalier.core.infrastructure.errors import EspalierError

pairs_app = typer.Typer(help="Preference pairs from feedback and imports.", no_args_is_help=True)
reward_app = typer.Typer(help="Reward models.", no_args_is_help=True)


@pairs_app.command("export")
def pairs_export(
    out: Annotated[Path | None, typer.Option("--out", help="JSONL file to write; stdout when absent.")] = None,
    include_imported: Annotated[bool, typer.Option(help="Also export imported pairs.")] = False,
    exclude_labeler: Annotated[
        list[str] | None, typer.Option(help="Key id whose feedback to leave out (repeatable).")
    ] = None,
) -> None:
    """Write every pair as JSONL in TRL's prompt/chosen/rejected format."""
    from espalier.core.sources.feedback import export_lines

    pairs = platform().pairs.export(None, include_imported=include_imported, exclude_labelers=exclude_labeler or [])
    if out is None:
        sys.stdout.writelines(export_lines(pairs))
    else:
        with out.open("w", encoding="utf-8") as handle:
            handle.writelines(export_lines(pairs))
        err.print(f"wrote {len(pairs)} pairs to {out}")


@pairs_app.command("import")
def pairs_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL with prompt, chosen, rejected.")],
    source: Annotated[
        str | None, typer.Option(help="A name for where the pairs came from (default: file name).")
    ] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Pass over bad lines instead of importing nothing.")] = False,
) -> None:
    """Import external pairs (e.g. Anthropic HH); pairs already present are not added twice."""

    instance = platform()
    with file.open(encoding="utf-8") as handle:
        result = instance.pairs.import_lines(handle, source=source or file.name, skip_invalid=skip_invalid)
    print_json(result)


@reward_app.command("list")
def reward_list() -> None:
    """Reward model versions with their held-out accuracy and promotion decision."""

    table = Table("version", "status", "accuracy", "pairs", "data", "created", "decision")
    for record in platform().reward_models.list():
        table.add_row(
            str(record.version),
            record.status,
            f"{record.metrics.get('accuracy', 0):.3f}",
            str(record.pairs),
            record.data_sha256[:12],
            f"{record.created_at:%Y-%m-%d %H:%M}",
            record.decision,
        )
    console.print(table)


@reward_app.command("train")
def reward_train(
    kind: Annotated[
        str | None, typer.Option(help="features (heads on the chat model's frozen features) or cross-encoder.")
    ] = None,
    heads: Annotated[int | None, typer.Option(help="features: heads (the extra ones measure uncertainty).")] = None,
    backbone: Annotated[str | None, typer.Option(help="features: the chat model whose backbone reads.")] = None,
    epochs: Annotated[int | None, typer.Option(help="cross-encoder: passes over the training pairs.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Tokens of prompt tail and answer read.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Pairs per step.")] = None,
    max_pairs: Annotated[int | None, typer.Option(help="Train on a seeded sample of at most this many pairs.")] = None,
    holdout_fraction: Annotated[float | None, typer.Option(help="Share of human pairs held out (by hash).")] = None,
    min_pairs: Annotated[int | None, typer.Option(help="Refuse to train on fewer pairs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of shuffling and sampling.")] = None,
    include_imported: Annotated[bool, typer.Option(help="Train on imported pairs too.")] = True,
    exclude_labeler: Annotated[
        list[str] | None, typer.Option(help="Key id whose feedback to leave out (repeatable).")
    ] = None,
    include_below_consensus: Annotated[
        bool, typer.Option(help="Keep labelers the agreement report marks below consensus.")
    ] = False,
    ai_pair_weight: Annotated[float | None, typer.Option(help="Weight of AI (constitutional) pairs, 0-1.")] = None,
    warm_start: Annotated[bool, typer.Option(help="Start from the current version's weights.")] = True,
    wait: Annotated[bool, typer.Option(help="Run the job here and follow it with a progress bar.")] = False,
) -> None:
    """Queue a train:reward job (a running server's workers pick it up, or --wait runs it here).

    Every option left out takes the trainer's default (docs/operators.md, "Reward models")."""
    from espalier.api.cli.progress import follow_job

    settings = {
        "kind": kind,
        "heads": heads,
        "backbone": backbone,
        "epochs": epochs,
        "max_steps": max_steps,
        "max_length": max_length,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "max_pairs": max_pairs,
        "holdout_fraction": holdout_fraction,
        "min_pairs": min_pairs,
        "seed": seed,
        "ai_pair_weight": ai_pair_weight,
    }
    params = {k: v for k, v in settings.items() if v is not None} | {
        "include_imported": include_imported,
        "exclude_labelers": list(exclude_labeler or []),
        "include_below_consensus": include_below_consensus,
        "warm_start": warm_start,
    }
    instance = platform().start(migrate=False, run_jobs=True) if wait else platform()
    try:
        job, count = instance.reward_models.queue_training(params, None, via="cli")
        if not wait:
            console.print(f"queued {job.id} on {count} pairs; follow it with: espalier jobs show {job.id}")
            return
        console.print(f"job {job.id} on {count} pairs")
        job = follow_job(instance.jobs, job)
    finally:
        if wait:
            instance.close()
    if job.status != "succeeded":
        raise EspalierError(f"reward training {job.status}: {job.error or job.message}")
    print_json(job.result)
