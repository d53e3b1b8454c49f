"""Evaluations of models before they serve; first the toxicity evaluation of the RLHF loop.

Each model continues the same validation prompts with the same sampling settings and seed; one
guardrail scorer rates the continuations (not the prompts). The record keeps per-model mean
toxicity, the share above the threshold, the difference to the first model and every
continuation's score, so later evaluations (an instruct model against its aligned version) can be
compared with it.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from espalier.core.infrastructure.contracts import ChatMessage, GenerationParams, Guardrail, Plotter
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.errors import InvalidInput, NotFound
from espalier.core.sources.learning.tables import EvaluationRecord
from espalier.core.sources.models.service import ModelService

log = logging.getLogger("espalier.evaluation")

MAX_PROMPTS = 5000

#: Finds the plotter that draws a kind of evaluation (the platform's ``plotter_for``), None if none does.
PlotterFor = Callable[[str], Plotter | None]


def load_prompts(path: Path, *, limit: int | None = None, field: str = "prompt") -> list[str]:
    """Prompts from a JSONL file (``{"prompt": "..."}``, or ``{"prompt": {"text": ...}}`` as in
    RealToxicityPrompts) or a plain text file with one prompt per line."""
    if not path.is_file():
        raise InvalidInput(f"prompts file {path} does not exist")
    prompts: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{path} line {number} is not JSON ({exc.msg})") from None
            value = row.get(field) if isinstance(row, dict) else None
            if isinstance(value, dict):
                value = value.get("text")
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(f"{path} line {number}: no non-empty '{field}' string")
            prompts.append(value)
        else:
            prompts.append(line)
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise InvalidInput(f"prompts file {path} has no prompts")
    if len(prompts) > MAX_PROMPTS:
        raise InvalidInput(f"at most {MAX_PROMPTS} prompts per evaluation; pass a limit")
    return prompts


def _split(model: str) -> tuple[str, str | None]:
    name, _, version = model.partition("@")
    return name, version or None


def evaluate_toxicity(
    engine: Engine,
    models: ModelService,
    scorer: Guardrail,
    model_names: Sequence[str],
    prompts: Sequence[str],
    out_dir: Path,
    *,
    max_tokens: int = 32,
    temperature: float = 0.7,
    seed: int = 0,
    threshold: float = 0.5,
    category: str = "toxicity",
    source: str = "",
    progress: Callable[[float, str], None] | None = None,
    plotter: PlotterFor | None = None,
) -> EvaluationRecord:
    """Generate a continuation of every prompt with every model, score them, store the record.

    ``model_names`` are registered models, optionally ``name@version``. The plotter for
    ``toxicity`` (the built-in draws a PNG and an SVG) writes into ``out_dir``; with none, no plot
    is stored and the record says so. Returns the stored :class:`EvaluationRecord`.
    """
    if not model_names:
        raise InvalidInput("give at least one model to evaluate (--model NAME, repeatable)")
    if len(set(model_names)) != len(model_names):
        raise InvalidInput("each model may be given once")
    if category not in scorer.categories:
        raise InvalidInput(
            f"scorer '{scorer.name}' has no category '{category}' (it has {', '.join(scorer.categories)})"
        )
    if not 0 < threshold < 1:
        raise InvalidInput(f"threshold must be between 0 and 1, got {threshold}")
    report = progress or (lambda fraction, message="": None)
    params = GenerationParams(max_tokens=max_tokens, temperature=temperature, top_p=0.9, n=1, seed=seed)
    total = len(model_names) * len(prompts)
    done = 0
    per_model: dict[str, Any] = {}
    for label in model_names:
        name, version = _split(label)
        model, version_row = models.load(name, version)
        texts = []
        for prompt in prompts:
            if all(hasattr(model, a) for a in ("generate_text",)):
                generation = model.generate_text(prompt, params, None)[0]
            else:
                generation = model.generate([ChatMessage("user", prompt)], params, None)[0]
            texts.append(generation.text)
            done += 1
            report(done / total * 0.95, f"{label}: {done}/{total} continuations")
        scores = [s.scores[category] for s in scorer.score(texts, direction="output")]
        per_model[label] = {
            "model_version": version_row.label,
            "mean_toxicity": statistics.fmean(scores),
            "share_above_threshold": sum(s >= threshold for s in scores) / len(scores),
            "max_toxicity": max(scores),
            "continuations": [
                {"prompt": p, "text": t, "score": s} for p, t, s in zip(prompts, texts, scores, strict=False)
            ],
        }
    baseline = per_model[model_names[0]]
    for label in model_names:
        entry = per_model[label]
        entry["mean_difference_vs_first"] = entry["mean_toxicity"] - baseline["mean_toxicity"]
        entry["share_difference_vs_first"] = entry["share_above_threshold"] - baseline["share_above_threshold"]
    record = EvaluationRecord(
        kind="toxicity",
        models=list(model_names),
        settings={
            "scorer": scorer.name,
            "scorer_version": getattr(scorer, "version", ""),
            "category": category,
            "threshold": threshold,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": 0.9,
            "seed": seed,
            "prompts": len(prompts),
            "source": source,
        },
        results={"models": per_model, "baseline": model_names[0]},
    )
    add_plots(record, plotter, threshold, out_dir / record.id)
    with session_scope(engine) as session:
        session.add(record)
    report(1.0, "done")
    return record


def add_plots(record: EvaluationRecord, plotter: PlotterFor | None, threshold: float, out_dir: Path) -> None:
    """The record's plots, from the plotter of its kind; with none loaded the evaluation keeps its
    results and ``results["plot"]`` says why there is no plot."""
    chosen = plotter(record.kind) if plotter is not None else None
    if chosen is None:
        note = f"no plot: no plotter for '{record.kind}' evaluations is loaded (the built-in one is the 'plots' plugin)"
        log.warning("evaluation %s: %s", record.id, note)
        record.results = {**record.results, "plot": note}
        return
    paths = chosen.plot(record.kind, record.results, threshold=threshold, out_dir=out_dir)
    record.artifacts = {key: str(path) for key, path in paths.items()}


class EvaluationService:
    def __init__(self, engine: Engine):
        self.engine = engine

    def get(self, evaluation_id: str) -> EvaluationRecord:
        with session_scope(self.engine) as session:
            record = session.get(EvaluationRecord, evaluation_id)
            if record is None:
                raise NotFound(f"no evaluation '{evaluation_id}'")
            return record

    def list(self, *, kind: str | None = None, limit: int = 50) -> list[EvaluationRecord]:
        from sqlmodel import select

        with session_scope(self.engine) as session:
            query = select(EvaluationRecord).order_by(EvaluationRecord.created_at.desc()).limit(limit)
            if kind:
                query = query.where(EvaluationRecord.kind == kind)
            return list(session.exec(query))
