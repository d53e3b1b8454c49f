"""``espalier pairs`` (export, import, summary) and ``espalier reward`` (list, train)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from espalier.api.cli.common import console, err, platform, print_json

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
    epochs: int = 1,
    max_steps: Annotated[int | None, typer.Option()] = None,
    max_length: int = 256,
    include_imported: Annotated[bool, typer.Option(help="Train on imported pairs too.")] = True,
) -> None:
    """Queue a train:reward job (a running server's workers pick it up)."""
    params = {"epochs": epochs, "max_length": max_length, **({"max_steps": max_steps} if max_steps else {})}
    job, count = platform().reward_models.queue_training(
        {**params, "include_imported": include_imported}, None, via="cli"
    )
    console.print(f"queued {job.id} on {count} pairs; follow it with: espalier jobs show {job.id}")
