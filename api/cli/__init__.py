"""The ``espalier`` command line (Typer + rich). Plugins add commands through ``register_commands``."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from espalier import __version__
from espalier.api.cli.common import console, err, platform, print_json  # noqa: F401  (re-exported)
from espalier.api.cli.feedback import pairs_app, reward_app
from espalier.api.cli.guardrails import eval_app, guardrails_app
from espalier.api.cli.labeling import labeling_app
from espalier.api.cli.policy import policy_app
from espalier.api.cli.promotion import register as _register_promotion
from espalier.core.infrastructure.errors import EspalierError

app = typer.Typer(
    name="espalier",
    help="Espalier: a self-hosted LLM platform that learns from its users.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
jobs_app = typer.Typer(help="Background jobs.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")

app.add_typer(pairs_app, name="pairs")
app.add_typer(reward_app, name="reward")

app.add_typer(labeling_app, name="labeling")


def _version(value: bool) -> None:
    if value:
        console.print(f"espalier {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    pass


# serve ---------------------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (ESPALIER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (ESPALIER_PORT).")] = None,
) -> None:
    """Upgrade the database, print a bootstrap admin key on first start, and serve the API."""
    import uvicorn

    from espalier.api.app import create_app

    instance = platform()
    if not instance.keys.list():
        _bootstrap_admin_key(instance)
    settings = instance.settings
    application = create_app(settings, platform=instance)
    from espalier.api.cli.ingest import write_server_file

    # tells `espalier ingest` on this ESPALIER_HOME to go through this server (see api/cli/ingest.py)
    server_file = write_server_file(settings.home, host or settings.host, port or settings.port)
    server = uvicorn.Server(
        uvicorn.Config(application, host=host or settings.host, port=port or settings.port, log_level="warning")
    )

    def announce() -> None:
        # "Serving on" only once start-up succeeded (the platform, the plugins) and the port is
        # bound: scripts that wait for the line then find a server that answers.
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            console.print(f"Serving on http://{host or settings.host}:{port or settings.port}  (API docs at /schema)")

    threading.Thread(target=announce, name="espalier-announce", daemon=True).start()
    try:
        server.run()
    finally:
        server_file.unlink(missing_ok=True)
    if not server.started:
        raise typer.Exit(1)


BOOTSTRAP_KEY_FILE = "bootstrap-admin.key"


def _bootstrap_admin_key(instance: Any) -> None:
    """The first admin key: shown once on a terminal; with no terminal (a container, a service
    manager, a pipe), written to a file only this user can read, so it never lands in logs."""
    created = instance.keys.create(name="bootstrap-admin", role="admin")
    console.rule("[bold]First start")
    if sys.stdout.isatty():
        console.print("An admin API key was created. It is shown [bold]once[/]; store it now:\n")
        console.print(f"    [bold green]{created.key}[/]\n", soft_wrap=True)
    else:
        path = instance.settings.home / BOOTSTRAP_KEY_FILE
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(created.key + "\n")
        console.print(
            f"An admin API key was created and written to {path} (readable by this user only; "
            "not printed, as this output is not a terminal). Store it elsewhere and delete the file.",
            soft_wrap=True,
            highlight=False,
        )
    console.print("Use it as: Authorization: Bearer <key>   (create more with 'espalier keys create')")
    console.rule()


# ingest --------------------------------------------------------------------------------------
@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="A file or a folder (.txt, .md, .html, .pdf; folders recursively).")],
    collection: Annotated[str, typer.Option(help="The collection (created when missing).")],
    key: Annotated[
        str | None, typer.Option(help="API key when a server runs on this home (or ESPALIER_API_KEY).")
    ] = None,
) -> None:
    """Ingest documents into a collection (re-ingesting an unchanged file is a no-op)."""
    from espalier.api.cli.ingest import run

    counts = run(path, collection, key, err)
    console.print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    if counts.get("failed"):
        raise typer.Exit(1)


# db ------------------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration."""
    from espalier.core.infrastructure.db.migrate import current_revision

    instance = platform(migrate=False)
    instance.migrate()
    console.print(f"database at revision {current_revision(instance.engine)}")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision and whether it is up to date."""
    from espalier.core.infrastructure.db.migrate import current_revision, head_revision

    instance = platform(migrate=False)
    current, head = current_revision(instance.engine), head_revision()
    console.print(
        f"current: {current}  head: {head}  {'(up to date)' if current == head else '(run: espalier db upgrade)'}"
    )


# keys ----------------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name for the key (who or what uses it).")],
    role: Annotated[str, typer.Option(help="admin, operator or user.")] = "user",
) -> None:
    """Create a key and print it (shown only once)."""
    created = platform().keys.create(name=name, role=role)
    err.print(f"created key {created.record.id} ({created.record.role}); it is shown only once:")
    sys.stdout.write(created.key + "\n")


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List keys (never their secrets)."""
    keys = platform().keys.list()
    if as_json:
        print_json({"keys": [record.model_dump(exclude={"secret_hash"}) for record in keys]})
        return
    table = Table("id", "name", "role", "created", "last used", "revoked")
    for record in keys:
        table.add_row(
            record.id,
            record.name,
            record.role,
            f"{record.created_at:%Y-%m-%d %H:%M}",
            f"{record.last_used_at:%Y-%m-%d %H:%M}" if record.last_used_at else "-",
            f"{record.revoked_at:%Y-%m-%d %H:%M}" if record.revoked_at else "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (see 'espalier keys list').")]) -> None:
    """Revoke a key: it answers 401 from now on."""
    record = platform().keys.revoke(key_id)
    console.print(f"revoked key {record.id} ({record.name})")


# plugins -------------------------------------------------------------------------------------
CONTRIBUTIONS = {  # platform attribute: what it holds, as `espalier plugins` names it
    "model_providers": "model provider",
    "builtin_models": "model",
    "builtin_templates": "prompt template",
    "embedders": "embedder",
    "retrievers": "retriever",
    "vector_stores": "vector store",
    "keyword_indexes": "keyword index",
    "document_extractors": "document extractor",
    "tools": "tool",
    "agents": "agent",
    "chain_specs": "chain",
    "guardrails": "guardrail",
    "plotters": "plotter",
    "reward_scorers": "reward scorer",
    "trainers": "trainer",
    "job_kinds": "job kind",
    "commands": "command",
}


def _contributions(instance: Any) -> dict[str, dict[str, list[str]]]:
    by_plugin: dict[str, dict[str, list[str]]] = {}
    for attribute, kind in CONTRIBUTIONS.items():
        for entry in getattr(instance, attribute):
            by_plugin.setdefault(entry.plugin, {}).setdefault(kind, []).append(str(entry.item.name))
    for item, plugin in instance.routes:
        paths = getattr(item, "paths", None) or [getattr(item, "path", "?")]
        by_plugin.setdefault(plugin, {}).setdefault("route", []).extend(sorted(str(path) for path in paths))
    return by_plugin


def plugins_check(instance: Any) -> list[str]:
    """What ``serve`` would refuse to start on: every contribution collected (duplicate or invalid
    names, items that are not what their hook registers) and the app built (routes that declare no
    access rule), without serving anything."""
    from espalier.api.app import create_app

    problems: list[str] = []
    try:
        instance.collect_all()
        create_app(instance.settings, platform=instance)
    except (EspalierError, RuntimeError) as exc:
        problems.append(str(exc))
    return problems


@app.command("plugins")
def plugins_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List loaded plugins with versions, the hooks they implement and what each contributes; check
    what `serve` checks (exit 1 if it would refuse to start)."""
    instance = platform(migrate=False)
    rows = instance.plugins.describe()
    problems = plugins_check(instance)
    contributions = {} if problems else _contributions(instance)
    failures = [vars(failure) for failure in instance.plugins.failures]
    if as_json:
        for row in rows:
            row["contributes"] = contributions.get(row["name"], {})
        print_json({"espalier_version": __version__, "plugins": rows, "failures": failures, "problems": problems})
    else:
        table = Table("plugin", "version", "distribution", "hooks", "contributes")
        for row in rows:
            given = "; ".join(
                f"{kind}: {', '.join(names)}" for kind, names in contributions.get(row["name"], {}).items()
            )
            table.add_row(
                row["name"], row["version"] or "-", row["distribution"] or "-", ", ".join(row["hooks"]), given or "-"
            )
        console.print(table)
        for failure in failures:
            err.print(f"[red]failed to load[/] {failure['name']}: {failure['error']}")
        for problem in problems:
            err.print(f"[red]serve would refuse to start:[/] {problem}")
    if problems:
        raise typer.Exit(1)


# jobs ----------------------------------------------------------------------------------------
def _job_dict(job: Any) -> dict[str, Any]:
    return job.model_dump()


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, cancelled")] = None,
    limit: int = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List jobs, newest first."""
    jobs = platform().jobs.list(status=status, limit=limit)
    if as_json:
        print_json({"jobs": [_job_dict(job) for job in jobs]})
        return
    table = Table("id", "kind", "status", "progress", "message", "created")
    for job in jobs:
        table.add_row(
            job.id, job.kind, job.status, f"{job.progress:.0%}", job.message[:60], f"{job.created_at:%Y-%m-%d %H:%M:%S}"
        )
    console.print(table)


@jobs_app.command("show")
def jobs_show(job_id: str) -> None:
    """Show one job and its log."""
    instance = platform()
    print_json(
        {"job": _job_dict(instance.jobs.get(job_id)), "logs": [line.message for line in instance.jobs.logs(job_id)]}
    )


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    """Cancel a queued or running job."""
    job = platform().jobs.cancel(job_id)
    console.print(f"job {job.id}: {'cancelled' if job.status == 'cancelled' else 'cancellation requested'}")


# models --------------------------------------------------------------------------------------
@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Registered models, their provider, source and serving version."""
    from dataclasses import asdict

    instance = platform()
    instance.models.sync_builtins()
    models = instance.models.list()
    if as_json:
        print_json({"models": [asdict(info) for info in models]})
        return
    table = Table("name", "provider", "serving", "versions", "source")
    for info in models:
        table.add_row(
            info.name + (" (built-in)" if info.builtin else ""),
            info.provider,
            info.serving_version,
            ", ".join(v["label"] for v in info.versions),
            info.source,
        )
    console.print(table)


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="The name consumers will use as `model`.")],
    source: Annotated[str, typer.Option(help="A .gguf file, a Hugging Face folder, or a remote base URL.")],
    provider: Annotated[
        str, typer.Option(help="transformers (local) or remote (OpenAI-compatible server).")
    ] = "transformers",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16, float16")] = "auto",
    context_window: Annotated[int | None, typer.Option(help="Override the model's context window.")] = None,
    option: Annotated[list[str] | None, typer.Option(help="Provider option KEY=VALUE (repeatable).")] = None,
) -> None:
    """Register a model."""
    from espalier.core.infrastructure.contracts import ModelSpec

    options = {}
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--option takes KEY=VALUE, got {item!r}")
        options[key] = value
    spec = ModelSpec(
        name=name, provider=provider, source=source, dtype=dtype, context_window=context_window, options=options
    )
    info = platform().models.add(spec)
    console.print(f"added model {info.name} ({info.provider}, version {info.serving_version})")


@models_app.command("remove")
def models_remove(name: str) -> None:
    """Remove a model (built-in models cannot be removed)."""
    platform().models.remove(name)
    console.print(f"removed model {name}")


_register_promotion(models_app)


def _add_plugin_commands() -> None:
    """Mount commands from plugins. Settings errors here are reported when a command runs."""
    try:
        instance = platform(migrate=False)
        commands = instance.commands
    except Exception as exc:  # a broken environment must not hide --help
        err.print(f"[yellow]plugin commands unavailable:[/] {exc}")
        return
    taken = BUILTIN_COMMANDS
    for entry in commands:
        command = entry.item
        if command.name in taken:
            err.print(
                f"[yellow]plugin '{entry.plugin}':[/] its command '{command.name}' has the name of a built-in "
                "command; skipped (rename it)"
            )
            continue
        if isinstance(command.target, typer.Typer):
            app.add_typer(command.target, name=command.name, help=command.help or None)
        else:
            app.command(name=command.name, help=command.help or None)(command.target)


app.add_typer(guardrails_app, name="guardrails")
app.add_typer(eval_app, name="eval")


app.add_typer(policy_app, name="policy")


def _builtin_commands() -> set[str]:
    names = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    return names | {group.name for group in app.registered_groups if group.name}


BUILTIN_COMMANDS = _builtin_commands()  # before any plugin's are mounted


def main() -> None:
    # Plugin commands are mounted for anything but a built-in command, so that `espalier --help`
    # (and `espalier` alone) lists them too; a built-in runs without loading plugins.
    if len(sys.argv) < 2 or sys.argv[1] not in BUILTIN_COMMANDS | {"--version"}:
        _add_plugin_commands()
    try:
        app()
    except EspalierError as exc:
        err.print(f"[red]error:[/] {exc.message}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
