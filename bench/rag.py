"""Retrieval benchmark on the HotpotQA sample (../shared/data/hotpot_dev_sample.jsonl).

    .venv/bin/python bench/rag.py [--questions 100] [--sizes 10000] [--queries 100] [--qa 30]
                                  [--repeats 2] [--parts abcd]

(a) recall@5 of vector, keyword and hybrid search: each question against its two supporting
    paragraphs, among every context paragraph of the questions (~10 per question);
(b) p50/p95 latency of ``POST /api/collections/{c}/search`` (vector mode, a real server) against a
    raw ``collection.query`` (MiniLM encode of the query + chromadb query) on the same collection,
    at each size in --sizes (chunks: HotpotQA sentences, repeated with a marker to reach the size;
    a copy reuses its sentence's vector with a little noise, set-up only);
(c) ingestion throughput: Espalier's ingestion (extract, chunk with the SmolLM2 tokenizer, embed,
    chromadb add, database rows, keyword index) against raw sentence-transformers encode plus
    chromadb add of the very same chunks; --repeats turns of each, alternating which goes first
    (E R, R E, ...), median wall time of each, and CPU seconds of the process beside it (less
    sensitive to other users of a shared machine than wall time);
(d) exact match (SQuAD's, after normalising), "contains the answer" (the normalised answer's words
    within the reply's first line) and token F1 of the default model's answers with and without
    retrieval (--qa questions).

Prints a table with the ratios and writes bench/results/rag.json. The machine is shared: defaults
are small, and the raw and served runs take turns rather than overlap.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import string
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _server import Server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data" / "hotpot_dev_sample.jsonl"
MODELS = REPO / ".pytest_cache" / "espalier-models"


def load_rows(limit: int) -> list[dict]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return rows[:limit]


def platform_at(home: Path):
    from espalier.core.infrastructure.settings import Settings
    from espalier.core.platform import Platform

    return Platform(Settings(home=home, model_cache_dir=MODELS, log_level="WARNING"), load_entry_points=False).start(
        run_jobs=False
    )


LOCAL = None


def local():
    global LOCAL
    if LOCAL is None:
        from espalier.core.infrastructure.identity import Principal

        LOCAL = Principal(key_id="bench", name="bench", role="operator")
    return LOCAL


# (a) and (c) ---------------------------------------------------------------------------------------
def ingest_paragraphs(platform, rows: list[dict], name: str = "hotpot") -> tuple[float, float, int]:
    """Wall and CPU seconds of Espalier's ingestion of the rows' paragraphs into collection ``name``."""
    rag = platform.rag
    rag.create_collection(name, local())
    paragraphs = {}
    for row in rows:
        for title, sentences in row["context"]:
            paragraphs.setdefault(title, "".join(sentences).strip())
    rag.model_for({})  # the tokenizer's model loads outside the timing, as the raw path has no such step
    rag._embed(
        list(paragraphs.values())[:128]
    )  # warm with real shapes: the first large encode is slow, for either path
    from espalier.api.cli.ingest import BATCH_BYTES, BATCH_FILES
    from espalier.core.sources.rag.service import Upload

    uploads = [Upload(text.encode(), "p.txt", title) for title, text in paragraphs.items()]
    started, cpu = time.perf_counter(), time.process_time()
    part: list = []
    for upload in uploads + [None]:  # batched as `espalier ingest FOLDER` does (files and bytes per batch)
        if part and (
            upload is None
            or len(part) >= BATCH_FILES
            or sum(len(u.data) for u in part) + len(upload.data) > BATCH_BYTES
        ):
            rag.ingest_many(name, local(), part, reindex=False)
            part = []
        if upload is not None:
            part.append(upload)
    record = rag.collection_by_name(name)
    rag.reindex(record.id)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return elapsed, cpu, len(chunk_rows(platform, record.id))


def chunk_rows(platform, collection_id: str) -> list:
    from sqlmodel import select

    from espalier.core.infrastructure.db.engine import session_scope
    from espalier.core.sources.rag.tables import ChunkRecord

    with session_scope(platform.engine) as session:
        return list(
            session.exec(select(ChunkRecord.id, ChunkRecord.text).where(ChunkRecord.collection_id == collection_id))
        )


def raw_ingest(platform, workdir: Path, name: str) -> tuple[float, float, int]:
    """Wall and CPU seconds of raw encode + chromadb add of the chunks Espalier made for "hotpot"."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from espalier.plugins.minilm_embedder.embedder import BATCH_SIZE, shared_model

    rows = chunk_rows(platform, platform.rag.collection_by_name("hotpot").id)
    client = chromadb.PersistentClient(
        path=str(workdir / "raw-chroma"), settings=ChromaSettings(anonymized_telemetry=False)
    )
    collection = client.get_or_create_collection(name, embedding_function=None, metadata={"hnsw:space": "cosine"})
    model = shared_model()
    started, cpu = time.perf_counter(), time.process_time()
    vectors = model.encode(
        [r[1] for r in rows], batch_size=BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True
    )
    for start in range(0, len(rows), 5000):
        part = rows[start : start + 5000]
        collection.add(
            ids=[r[0] for r in part], embeddings=vectors[start : start + 5000], documents=[r[1] for r in part]
        )
    return time.perf_counter() - started, time.process_time() - cpu, len(rows)


def ingestion(platform, rows: list[dict], workdir: Path, repeats: int) -> dict:
    """(c): turns alternate which path goes first, so neither always meets a warmer or quieter machine."""
    runs: dict[str, list] = {"espalier": [], "raw": []}
    for turn in range(repeats):
        for path in ("espalier", "raw") if turn % 2 == 0 else ("raw", "espalier"):
            if path == "raw":
                runs["raw"].append(raw_ingest(platform, workdir, f"raw-{turn}"))
            elif turn == 0:
                runs["espalier"].append(ingest_paragraphs(platform, rows))  # kept: (a) and (d) search it
            else:
                runs["espalier"].append(ingest_paragraphs(platform, rows, f"hotpot-{turn}"))
                platform.rag.delete_collection(f"hotpot-{turn}", local())
    espalier_s, espalier_cpu = (statistics.median(r[i] for r in runs["espalier"]) for i in (0, 1))
    raw_s, raw_cpu = (statistics.median(r[i] for r in runs["raw"]) for i in (0, 1))
    chunks, raw_chunks = runs["espalier"][0][2], runs["raw"][0][2]
    return {
        "chunks": chunks,
        "repeats": repeats,
        "espalier_chunks_per_s": chunks / espalier_s,
        "raw_chunks_per_s": raw_chunks / raw_s,
        "ratio": (chunks / espalier_s) / (raw_chunks / raw_s),
        "espalier_cpu_s": espalier_cpu,
        "raw_cpu_s": raw_cpu,
        "cpu_ratio": (raw_cpu / raw_chunks) / (espalier_cpu / chunks),
        "walls_s": {path: [round(r[0], 2) for r in items] for path, items in runs.items()},
    }


def recall_at_5(platform, rows: list[dict]) -> dict[str, float]:
    out = {}
    for mode in ("vector", "keyword", "hybrid"):
        found = total = 0
        for row in rows:
            results = platform.rag.search("hotpot", local(), row["question"], k=5, mode=mode)
            sources = {r.source for r in results}
            supporting = {title for title, _ in row["supporting_facts"]}
            found += len(supporting & sources)
            total += len(supporting)
        out[mode] = found / total
    return out


# (d) -----------------------------------------------------------------------------------------------
def normalise(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1(prediction: str, truth: str) -> float:
    p, t = normalise(prediction).split(), normalise(truth).split()
    common = sum((Counter(p) & Counter(t)).values())
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(t)
    return 2 * precision * recall / (precision + recall)


def answer_quality(platform, rows: list[dict]) -> dict[str, dict[str, float]]:
    from espalier.core.infrastructure.contracts import ChatMessage, ChatRequest, GenerationParams

    out = {}
    for label, collections in (("without retrieval", None), ("with retrieval", ["hotpot"])):
        em = contains = f1_sum = 0.0
        for row in rows:
            question = row["question"] + " Answer with a short phrase only."
            request = ChatRequest(
                model=platform.settings.default_model,
                messages=[ChatMessage("user", question)],
                params=GenerationParams(max_tokens=24, temperature=0.0),
                collections=collections,
            )
            text = platform.chat.complete(request, local()).generations[0].text
            text = re.sub(r"\[\d+\]", "", text).strip().split("\n")[0]
            answer, reply = normalise(row["answer"]), normalise(text)
            em += float(bool(answer) and answer == reply)  # SQuAD's exact match
            contains += float(
                bool(answer) and f" {answer} " in f" {reply} "
            )  # the answer's words, in order, within the reply
            f1_sum += f1(text, row["answer"])
        out[label] = {"exact_match": em / len(rows), "contains_answer": contains / len(rows), "f1": f1_sum / len(rows)}
    return out


# (b) -----------------------------------------------------------------------------------------------
def sentences(rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        for _title, items in row["context"]:
            out += [s.strip() for s in items if len(s.strip()) > 20]
    return list(dict.fromkeys(out))


def bulk_collection(platform, name: str, texts: list[str]) -> None:
    """Loads ``texts`` as one-chunk documents straight into the store (set-up only, not measured)."""
    from espalier.core.infrastructure.db.engine import session_scope
    from espalier.core.sources.rag.tables import ChunkRecord, DocumentRecord

    rag = platform.rag
    record = rag.create_collection(name, local())
    ids = [f"{record.id}-{n}" for n in range(len(texts))]
    # set-up only: each distinct sentence is embedded once; its marked copies reuse the vector with
    # a little noise (renormalised), so 100k chunks do not cost 100k encodes on a shared machine
    base = list(dict.fromkeys(re.sub(r" \(copy \d+\)$", "", t) for t in texts))
    encoded = dict(zip(base, rag._embed(base), strict=True))
    noise = np.random.default_rng(0)
    vectors = np.stack([encoded[re.sub(r" \(copy \d+\)$", "", t)] for t in texts]).astype("float32")
    copies = np.array([t not in encoded for t in texts])
    vectors[copies] += noise.normal(0, 0.02, size=(int(copies.sum()), vectors.shape[1])).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rag.store.add(rag.chroma_name(record), ids, vectors, texts, [{"_doc": i} for i in ids])
    with session_scope(platform.engine) as session:
        for start in range(0, len(ids), 2000):
            session.add_all(
                [
                    DocumentRecord(
                        id=i,
                        collection_id=record.id,
                        source=f"s{i}",
                        content_hash="-",
                        media_type="text",
                        chunk_count=1,
                        characters=len(t),
                    )
                    for i, t in zip(ids[start : start + 2000], texts[start : start + 2000], strict=False)
                ]
            )
            session.flush()
            session.add_all(
                [
                    ChunkRecord(id=i, document_id=i, collection_id=record.id, index=0, start=0, end=len(t), text=t)
                    for i, t in zip(ids[start : start + 2000], texts[start : start + 2000], strict=False)
                ]
            )
            session.flush()
    rag.reindex(record.id)


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def latency(rows: list[dict], size: int, queries: list[str], workdir: Path) -> dict[str, float]:
    home = workdir / f"latency-{size}"
    platform = platform_at(home)
    base = sentences(rows)
    texts = [base[n % len(base)] + ("" if n < len(base) else f" (copy {n // len(base)})") for n in range(size)]
    bulk_collection(platform, "bench", texts)
    rag = platform.rag
    collection = rag.store.collection(rag.chroma_name(rag.collection_by_name("bench")))
    from espalier.plugins.minilm_embedder.embedder import shared_model

    model = shared_model()
    raw = []
    for query in queries + queries[:10]:
        started = time.perf_counter()
        vector = model.encode([query], normalize_embeddings=True, convert_to_numpy=True)
        collection.query(query_embeddings=vector, n_results=5)
        raw.append(time.perf_counter() - started)
    raw = raw[10:]
    platform.close()
    del platform, collection  # the server opens the same store next: one process at a time
    server = Server(home, env={"ESPALIER_MODEL_CACHE_DIR": str(MODELS)})
    served = []
    try:
        with httpx.Client(base_url=server.base, headers=server.headers, timeout=60) as client:
            for query in queries[:10] + queries:
                started = time.perf_counter()
                response = client.post("/api/collections/bench/search", json={"query": query, "k": 5, "mode": "vector"})
                served.append(time.perf_counter() - started)
                response.raise_for_status()
    finally:
        server.stop()
    served = served[10:]
    raw_p50, raw_p95 = percentiles(raw)
    api_p50, api_p95 = percentiles(served)
    return {
        "chunks": size,
        "raw_p50_ms": raw_p50 * 1000,
        "raw_p95_ms": raw_p95 * 1000,
        "api_p50_ms": api_p50 * 1000,
        "api_p95_ms": api_p95 * 1000,
        "ratio_p50": api_p50 / raw_p50,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=100, help="HotpotQA questions whose paragraphs are ingested")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000], help="chunk counts for the latency test")
    parser.add_argument("--queries", type=int, default=100, help="queries per latency measurement")
    parser.add_argument(
        "--qa", type=int, default=30, help="questions answered by the model, with and without retrieval"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="turns of each ingestion path in (c), alternating which goes first"
    )
    parser.add_argument(
        "--parts", default="abcd", help="which parts to run, e.g. 'c' or 'ad' (a, c and d share one ingestion)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rag.json")
    args = parser.parse_args()
    rows = load_rows(200)
    report: dict = {"settings": vars(args) | {"out": str(args.out)}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        platform = platform_at(workdir / "quality")
        subset = rows[: args.questions]
        if "c" in args.parts:
            report["ingestion"] = ingestion(platform, subset, workdir, max(1, args.repeats))
            print(
                f"ingestion: {report['ingestion']}", file=sys.stderr, flush=True
            )  # long runs: each part as it is done
        elif set("ad") & set(args.parts):
            ingest_paragraphs(platform, subset)
        if "a" in args.parts:
            report["recall_at_5"] = recall_at_5(platform, subset)
            print(f"recall@5: {report['recall_at_5']}", file=sys.stderr, flush=True)
        if "d" in args.parts and args.qa:
            report["answers"] = answer_quality(platform, subset[: args.qa])
        platform.close()
        queries = [row["question"] for row in rows[: args.queries]]
        report["latency"] = []
        for size in args.sizes if "b" in args.parts else []:
            report["latency"].append(latency(rows, size, queries, workdir))
            print(f"latency: {report['latency'][-1]}", file=sys.stderr, flush=True)

    print(f"\nRAG benchmark ({args.questions} HotpotQA questions; shared noisy machine, small settings)\n")
    if "recall_at_5" in report:
        print("(a) recall@5 (supporting paragraphs among the top 5)")
        for mode, value in report["recall_at_5"].items():
            print(f"    {mode:<8} {value:.3f}   ratio to vector {value / report['recall_at_5']['vector']:.2f}")
    if report["latency"]:
        print("(b) search latency, vector mode, k=5")
        print(f"    {'chunks':>7} {'raw p50':>9} {'raw p95':>9} {'API p50':>9} {'API p95':>9} {'p50 ratio':>10}")
    for row in report["latency"]:
        print(
            f"    {row['chunks']:>7} {row['raw_p50_ms']:>8.1f}ms {row['raw_p95_ms']:>8.1f}ms "
            f"{row['api_p50_ms']:>8.1f}ms {row['api_p95_ms']:>8.1f}ms {row['ratio_p50']:>10.2f}"
        )
    if "ingestion" in report:
        ing = report["ingestion"]
        print(
            f"(c) ingestion of {ing['chunks']} chunks (median of {ing['repeats']}): "
            f"Espalier {ing['espalier_chunks_per_s']:.1f}/s, "
            f"raw encode+add {ing['raw_chunks_per_s']:.1f}/s, ratio {ing['ratio']:.2f}; CPU seconds "
            f"{ing['espalier_cpu_s']:.1f} vs {ing['raw_cpu_s']:.1f}, ratio per chunk {ing['cpu_ratio']:.2f}"
        )
    if "answers" in report:
        print(f"(d) answers of the default model on {args.qa} questions")
        for label, scores in report["answers"].items():
            print(
                f"    {label:<18} EM {scores['exact_match']:.2f}  contains {scores['contains_answer']:.2f}  "
                f"F1 {scores['f1']:.3f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
