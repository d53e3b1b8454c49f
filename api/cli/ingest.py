"""``espalier ingest PATH --collection C``: files or folders into a collection, with a progress bar.

chromadb's embedded client is not safe across processes, so when a server is running on the same
``ESPALIER_HOME`` (it leaves ``server.json`` there while it serves) the CLI uploads through its API
with ``--key`` / ``ESPALIER_API_KEY``; what it ingests is searchable through the server at once.
With no server running it writes to the embedded store directly, as a local operator.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from espalier.core.infrastructure.errors import EspalierError, InvalidInput, Unavailable

SERVER_FILE = "server.json"


def write_server_file(home: Path, host: str, port: int) -> Path:
    path = home / SERVER_FILE
    path.write_text(
        json.dumps({"pid": os.getpid(), "url": f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"})
    )
    return path


def running_server(home: Path) -> str | None:
    """The URL of a live server on this home, or None (a stale file from a crash is ignored)."""
    import httpx

    path = home / SERVER_FILE
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
        if httpx.get(info["url"] + "/healthz", timeout=2).status_code == 200:
            return str(info["url"])
    except (OSError, ValueError, KeyError, httpx.HTTPError):
        return None
    return None


def files_under(path: Path, suffixes: Collection[str] | None = None) -> list[Path]:
    """``path`` itself, or the files under it whose name ends in one of ``suffixes`` (by default
    those a platform with these settings reads: text, Markdown and its document extractors')."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InvalidInput(f"{path} is neither a file nor a folder")
    if suffixes is None:
        suffixes = accepted_suffixes()
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def accepted_suffixes() -> set[str]:
    from espalier.core.infrastructure.settings import load_settings
    from espalier.core.platform import Platform

    instance = Platform(load_settings())
    try:
        return set(instance.document_types.media_types)
    finally:
        instance.close()


def source_name(root: Path, file: Path) -> str:
    return str(file.relative_to(root)) if root.is_dir() else file.name


#: files per ingestion batch: one embedding pass, one chromadb add and one transaction each. Big
#: batches let the embedder sort more texts by length (less padding); the byte cap bounds memory
#: and stays under the server's default upload limit.
BATCH_FILES = 256
BATCH_BYTES = 8 * 1024 * 1024


def batches(files: list[Path], max_files: int = BATCH_FILES, max_bytes: int = BATCH_BYTES) -> Iterator[list[Path]]:
    part: list[Path] = []
    size = 0
    for file in files:
        length = file.stat().st_size
        if part and (len(part) >= max_files or size + length > max_bytes):
            yield part
            part, size = [], 0
        part.append(file)
        size += length
    if part:
        yield part


def ingest_via_server(url: str, key: str, collection: str, root: Path, files: list[Path]) -> Iterator[tuple[Path, str]]:
    """Batches of files as multipart uploads; a refused batch is retried file by file to name the bad one."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
        if client.get(f"/api/collections/{collection}").status_code == 404:
            response = client.post("/api/collections", json={"name": collection})
            if response.status_code >= 400:
                raise InvalidInput(f"could not create collection '{collection}': {response.text}")

        def send(part: list[Path]) -> Any:
            # the multipart filename carries the source (its path under the folder)
            return client.post(
                f"/api/collections/{collection}/upload",
                files=[("file", (source_name(root, f), f.read_bytes())) for f in part],
            )

        for part in batches(files):
            response = send(part)
            if response.status_code < 400:
                for file, document in zip(part, response.json()["documents"], strict=True):
                    yield file, document["status"]
                continue
            if len(part) == 1 or response.status_code not in (400, 413):
                for file in part:
                    yield file, f"failed: {_detail(response)}"
                continue
            for file in part:
                single = send([file])
                yield (
                    file,
                    f"failed: {_detail(single)}"
                    if single.status_code >= 400
                    else single.json()["documents"][0]["status"],
                )


def _detail(response: Any) -> str:
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return response.text[:200]


def ingest_embedded(instance: Any, collection: str, root: Path, files: list[Path]) -> Iterator[tuple[Path, str]]:
    from espalier.core.infrastructure.identity import Principal
    from espalier.core.sources.rag.service import Upload

    local = Principal(key_id="cli", name="local cli", role="operator")
    rag = instance.rag
    if collection not in {c.name for c in rag.list_collections(local)}:
        rag.create_collection(collection, local)
    changed = False
    for part in batches(files):
        uploads = [Upload(f.read_bytes(), f.name, source_name(root, f)) for f in part]
        try:  # one embedding pass and one transaction per batch
            results = rag.ingest_many(collection, local, uploads, reindex=False)
            pairs = [(f, r.status) for f, r in zip(part, results, strict=True)]
        except InvalidInput:  # a bad file refuses its batch: go one by one to name it and keep the rest
            pairs = []
            for file, upload in zip(part, uploads, strict=True):
                try:
                    pairs.append((file, rag.ingest_many(collection, local, [upload], reindex=False)[0].status))
                except InvalidInput as exc:
                    pairs.append((file, f"failed: {exc.message}"))
        for file, status in pairs:
            changed |= status in ("created", "replaced")
            yield file, status
    if changed:  # one keyword-index rebuild for the whole folder
        rag.reindex(rag.collection_by_name(collection).id)


def run(path: Path, collection: str, key: str | None, console: Any) -> dict[str, int]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from espalier.core.infrastructure.settings import load_settings
    from espalier.core.platform import Platform

    settings = load_settings()
    instance = Platform(settings)  # its document extractors say which files are read
    files = files_under(path, instance.document_types.media_types)
    if not files:
        raise InvalidInput(f"no supported files under {path} (.txt, .md, .html, .pdf)")
    url = running_server(settings.home)
    if url:
        instance.close()
        key = key or os.environ.get("ESPALIER_API_KEY")
        if not key:
            raise InvalidInput(f"a server is running on this ESPALIER_HOME ({url}); pass --key or set ESPALIER_API_KEY")
        console.print(f"a server is running at {url}: ingesting through its API")
        results = ingest_via_server(url, key, collection, path, files)
    else:
        settings.ensure_dirs()
        instance.start(run_jobs=False)
        results = ingest_embedded(instance, collection, path, files)
    counts: dict[str, int] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as progress:
        task = progress.add_task(f"ingesting into {collection}", total=len(files))
        try:
            for file, status in results:
                key_name = "failed" if status.startswith("failed") else status
                counts[key_name] = counts.get(key_name, 0) + 1
                if key_name == "failed":
                    progress.console.print(f"[red]{file}[/]: {status}")
                progress.advance(task)
        except EspalierError:
            raise
        except Exception as exc:
            raise Unavailable(f"ingestion stopped: {exc}") from exc
    return counts
