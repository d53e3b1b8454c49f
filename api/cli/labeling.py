"""``espalier labeling`` (create, status): labeling tasks from the command line.

The CLI works on the database directly, as the local administrator: ``create`` stores the task and
queues its ``labeling:generate`` job, which a running server's workers pick up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from espalier.api.cli.common import console, platform, print_json

labeling_app = typer.Typer(
    help="Labeling tasks: candidates to rank, labelers, progress, agreement.", no_args_is_help=True
)


def _local():
    from espalier.core.infrastructure.identity import Principal

    return Principal(key_id="cli", name="local cli", role="admin")


@labeling_app.command("create")
def labeling_create(
    name: Annotated[str, typer.Argument(help="A name for the task.")],
    prompts: Annotated[
        Path | None, typer.Option("--prompts", exists=True, dir_okay=False, help="Text file: one prompt a line.")
    ] = None,
    conversation: Annotated[
        list[str] | None, typer.Option(help="A logged conversation id to take items from (repeatable).")
    ] = None,
    instructions: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Instructions for labelers (default: the built-in text)."),
    ] = None,
    n: Annotated[int, typer.Option(help="Candidates per item.")] = 3,
    model: Annotated[
        str | None, typer.Option(help="Model that writes the candidates (default: the default model).")
    ] = None,
    rankings: Annotated[int, typer.Option(help="Rankings required per item (distinct labelers).")] = 2,
    labeler: Annotated[list[str] | None, typer.Option(help="API key id of a labeler (repeatable).")] = None,
    max_tokens: int = 128,
    temperature: float = 1.0,
    seed: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Build a task and queue the generation of its candidates."""

    lines = (
        [line.strip() for line in prompts.read_text(encoding="utf-8").splitlines() if line.strip()] if prompts else []
    )
    instance = platform()
    task = instance.labeling.create(
        _local(),
        name=name,
        prompts=lines,
        conversation_ids=conversation or [],
        instructions=instructions.read_text(encoding="utf-8") if instructions else None,
        n=n,
        model=model,
        rankings_required=rankings,
        labelers=labeler or [],
        temperature=temperature,
        max_tokens=max_tokens,
        seed=seed,
        via="cli",
    )
    print_json({"task_id": task.id, "job_id": task.job_id, "progress": instance.labeling.progress(task.id)})


@labeling_app.command("status")
def labeling_status(
    task_id: Annotated[str | None, typer.Argument(help="A task id; all tasks when absent.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (progress and agreement).")] = False,
) -> None:
    """Progress of every task, or one task's progress, labelers and agreement."""

    service = platform(migrate=True).labeling
    if task_id is None:
        table = Table("task", "name", "status", "items", "rankings", "done")
        for task in service.list(_local()):
            progress = service.progress(task.id)
            table.add_row(
                task.id,
                task.name,
                task.status,
                f"{progress['items_generated']}/{progress['items']}",
                f"{progress['rankings_done']}/{progress['rankings_total']}",
                f"{progress['fraction']:.0%}",
            )
        console.print(table)
        return
    progress, agreement = service.progress(task_id), service.agreement(task_id)
    if json_out:
        print_json({"progress": progress, "agreement": agreement})
        return
    console.print(
        f"{task_id}: {progress['status']}, {progress['items_done']}/{progress['items']} items done, "
        f"{progress['rankings_done']}/{progress['rankings_total']} rankings; "
        f"Kendall's tau {agreement['mean_tau']}, Krippendorff's alpha {agreement['alpha']}"
    )
    table = Table("labeler", "done", "leased", "mean tau", "alpha without", "below consensus", "excluded")
    for key_id, stats in progress["labelers"].items():
        agree = agreement["labelers"].get(key_id, {})
        table.add_row(
            key_id,
            str(stats["done"]),
            str(stats["leased"]),
            str(agree.get("mean_tau", "-")),
            str(agree.get("alpha_without", "-")),
            "yes" if agree.get("below_consensus") else "",
            "yes" if key_id in agreement["excluded_labelers"] else "",
        )
    console.print(table)
