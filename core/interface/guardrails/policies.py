"""Guardrail policies: which scorer checks which text, and what happens above a threshold.

Scorers (``register_guardrails``) only score. A :class:`Policy` names a direction (``input``,
``output``, ``retrieved``, ``tool``), the routes it covers (``chat``, ``completion``, ``*``), a
scorer, a threshold per category and an action:

* ``flag``: let the text through and record the decision;
* ``redact``: replace the text with ``[redacted]`` and carry on;
* ``block``: refuse. Input: the request fails with ``content_policy_violation`` before any model
  runs. Output: the completion is replaced by the policy's refusal, ``finish_reason`` becomes
  ``content_filter``; a stream stops at the piece that crossed the threshold.

Every decision that is not ``allow`` is stored as a :class:`GuardrailEvent`; every decision,
``allow`` included, is counted in ``/metrics``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prometheus_client import Counter
from sqlalchemy.engine import Engine

from espalier.core.infrastructure.contracts import (
    ChatMessage,
    Direction,
    Generation,
    Guardrail,
    GuardrailDecisionEvent,
    GuardrailScore,
    Screened,
    TokenDelta,
)
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.errors import EspalierError, InvalidInput, NotFound
from espalier.core.infrastructure.identity import Principal
from espalier.core.infrastructure.registry import Registry
from espalier.core.interface.guardrails.tables import GuardrailEvent

log = logging.getLogger("espalier.guardrails")

Action = Literal["allow", "flag", "redact", "block"]
Stage = Literal["all", "before", "flags"]
ACTIONS = ("flag", "redact", "block")
_STRENGTH = {"allow": 0, "flag": 1, "redact": 2, "block": 3}
DIRECTIONS = ("input", "output", "retrieved", "tool")
REDACTED = "[redacted]"
DEFAULT_REFUSAL = "This content was blocked by the platform's content policy."
MAX_EVENT_TEXT = 4000

# One process-wide counter: prometheus_client's default registry is what /metrics exposes.
DECISIONS = Counter(
    "espalier_guardrail_decisions",
    "Guardrail decisions by direction, route, scorer and action (allow included).",
    ["direction", "route", "scorer", "action"],
)


class GuardrailBlocked(EspalierError):
    """A policy refused the text. The code matches OpenAI's, so SDKs surface it the usual way."""

    status = 400
    code = "content_policy_violation"


@dataclass(frozen=True)
class Policy:
    name: str
    direction: Direction
    scorer: str
    thresholds: Mapping[str, float]
    action: Literal["flag", "redact", "block"] = "flag"
    routes: tuple[str, ...] = ("*",)
    refusal: str = DEFAULT_REFUSAL

    def covers(self, direction: str, route: str) -> bool:
        return self.direction == direction and ("*" in self.routes or route in self.routes)

    @classmethod
    def parse(cls, raw: Mapping[str, Any], number: int) -> Policy:
        """One policy from settings; every problem names the policy and what to write instead."""
        where = f"guardrail policy #{number + 1}"
        if not isinstance(raw, Mapping):
            raise InvalidInput(f"{where} must be a table/object, got {type(raw).__name__}")
        known = {"name", "direction", "scorer", "thresholds", "threshold", "action", "routes", "refusal"}
        unknown = set(raw) - known
        if unknown:
            raise InvalidInput(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        direction = raw.get("direction")
        if direction not in DIRECTIONS:
            raise InvalidInput(f"{where}: direction must be one of {', '.join(DIRECTIONS)} (got {direction!r})")
        action = raw.get("action", "flag")
        if action not in ACTIONS:
            raise InvalidInput(f"{where}: action must be one of {', '.join(ACTIONS)} (got {action!r})")
        scorer = raw.get("scorer")
        if not isinstance(scorer, str) or not scorer:
            raise InvalidInput(f"{where}: give 'scorer', the name of a registered guardrail (e.g. 'profanity')")
        thresholds = raw.get("thresholds")
        if thresholds is None and "threshold" in raw:
            thresholds = {"*": raw["threshold"]}
        if not isinstance(thresholds, Mapping) or not thresholds:
            raise InvalidInput(
                f"{where}: give 'thresholds' = {{category = 0.5, ...}} (or one 'threshold' for all categories)"
            )
        for category, value in thresholds.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise InvalidInput(f"{where}: threshold for '{category}' must be a number in [0, 1] (got {value!r})")
        routes = raw.get("routes", ["*"])
        if isinstance(routes, str):
            routes = [routes]
        if not isinstance(routes, list) or not routes or not all(isinstance(r, str) and r for r in routes):
            raise InvalidInput(f"{where}: routes must be a list of route names such as ['chat', 'completion'] or ['*']")
        name = raw.get("name") or f"{direction}-{scorer}-{action}"
        refusal = raw.get("refusal", DEFAULT_REFUSAL)
        if not isinstance(refusal, str) or not refusal.strip():
            raise InvalidInput(f"{where}: refusal must be a non-empty string")
        return cls(
            str(name),
            direction,
            scorer,
            {str(k): float(v) for k, v in thresholds.items()},
            action,
            tuple(routes),
            refusal,
        )

    def over(self, score: GuardrailScore) -> list[str]:
        """Categories at or above their threshold (``*`` applies to every category)."""
        hits = []
        for category, value in score.scores.items():
            threshold = self.thresholds.get(category, self.thresholds.get("*"))
            if threshold is not None and value >= threshold:
                hits.append(category)
        return hits


def default_policies(scorers: Registry[Guardrail]) -> list[Mapping[str, Any]]:
    """The policies in force when ``guardrail_policies`` is unset: those the registered scorers
    offer (a scorer's optional ``default_policies``; each names no scorer, it is the one offering
    it), in registration order. Core names no scorer: the plugins say how theirs is used."""
    policies: list[Mapping[str, Any]] = []
    for entry in scorers:
        for policy in getattr(entry.item, "default_policies", ()) or ():
            policies.append({**policy, "scorer": entry.name})
    return policies


def parse_policies(raw: Sequence[Mapping[str, Any]] | None, scorers: Registry[Guardrail]) -> list[Policy]:
    """The operator's policies, and the offered defaults for every direction they leave uncovered.

    Writing input and output policies keeps retrieved passages and agents' tool output screened
    as they always were; a policy on ``retrieved`` or ``tool`` replaces the offered ones of that
    direction. An empty list turns every policy off, the offered ones included."""
    if raw is not None and not raw:
        return []
    written = [Policy.parse(item, i) for i, item in enumerate(raw or ())]
    covered = {policy.direction for policy in written}
    offered = [item for item in default_policies(scorers) if item.get("direction") not in covered]
    policies = written + [Policy.parse(item, len(written) + i) for i, item in enumerate(offered)]
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise InvalidInput(f"guardrail policy names must be unique (got {names})")
    for policy in policies:
        if policy.scorer not in scorers:
            raise InvalidInput(
                f"guardrail policy '{policy.name}' uses scorer '{policy.scorer}', which is not registered "
                f"(available: {', '.join(scorers.names()) or 'none'})"
            )
    return policies


@dataclass
class Decision:
    """The outcome for one text: the strongest action of the policies that matched."""

    action: Action
    text: str
    policy: Policy | None = None
    events: list[str] = field(default_factory=list)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # scorer -> category -> score

    @property
    def refusal(self) -> str:
        return self.policy.refusal if self.policy else DEFAULT_REFUSAL


@dataclass
class CheckContext:
    """Who and what a check is for: stored with each event."""

    route: str
    request_id: str | None = None
    principal: Principal | None = None


class GuardrailService:
    def __init__(
        self,
        engine: Engine,
        scorers: Registry[Guardrail],
        policies: list[Policy],
        *,
        store_allowed: bool = False,
        announce: Callable[[str, object], None] | None = None,
    ):
        self.engine = engine
        self.announce = announce or (lambda hook, event: None)  # on_guardrail_decision, once stored
        self.scorers = scorers
        self.policies = policies
        self.store_allowed = store_allowed

    def policies_for(self, direction: str, route: str, stage: Stage = "all") -> list[Policy]:
        """The policies for ``direction`` on ``route``; ``stage`` keeps those that can change what
        a model sees (``"before"``: block and redact) or those that only record (``"flags"``)."""
        return [p for p in self.policies if p.covers(direction, route) and _in_stage(p, stage)]

    # Scoring -------------------------------------------------------------------------------
    def _score(
        self, policies: Sequence[Policy], texts: Sequence[str], direction: Direction
    ) -> dict[str, list[GuardrailScore]]:
        """Each needed scorer runs once over all texts."""
        by_scorer: dict[str, list[GuardrailScore]] = {}
        for name in dict.fromkeys(p.scorer for p in policies):
            results = self.scorers.get(name).score(list(texts), direction=direction)
            if len(results) != len(texts):
                raise EspalierError(f"guardrail '{name}' returned {len(results)} scores for {len(texts)} texts")
            by_scorer[name] = results
        return by_scorer

    def check(
        self,
        texts: Sequence[str],
        *,
        direction: Direction,
        context: CheckContext,
        record: bool = True,
        stage: Stage = "all",
    ) -> list[Decision]:
        """Decide on each text under the policies for ``direction`` and the context's route.

        ``record=False`` decides without storing events or counting (a stream's interim checks);
        ``stage`` narrows the policies (see :meth:`policies_for`).
        """
        policies = self.policies_for(direction, context.route, stage)
        if not policies or not texts:
            return [Decision("allow", text) for text in texts]
        scored = self._score(policies, texts, direction)
        decisions, events = [], []
        for i, text in enumerate(texts):
            decision = Decision(
                "allow", text, scores={name: dict(results[i].scores) for name, results in scored.items()}
            )
            for policy in policies:
                score = scored[policy.scorer][i]
                hits = policy.over(score)
                action: Action = policy.action if hits else "allow"
                if record:
                    DECISIONS.labels(direction, context.route, policy.scorer, action).inc()
                if record and (action != "allow" or self.store_allowed):
                    event = _event(policy, score, action, hits, text, direction, context)
                    events.append(event)
                    decision.events.append(event.id)
                if _STRENGTH[action] > _STRENGTH[decision.action]:
                    decision.action, decision.policy = action, policy
            if decision.action == "redact":
                decision.text = REDACTED
            decisions.append(decision)
        if events:
            with session_scope(self.engine) as session:
                session.add_all(events)
            for event in events:
                self.announce(
                    "on_guardrail_decision",
                    GuardrailDecisionEvent(
                        event_id=event.id,
                        request_id=event.request_id,
                        api_key_id=event.owner_key_id,
                        direction=event.direction,
                        route=event.route,
                        policy=event.policy,
                        scorer=event.scorer,
                        action=event.action,
                        categories=tuple(event.categories),
                        scores=dict(event.scores),
                    ),
                )
        return decisions

    def screen(
        self,
        texts: Sequence[str],
        *,
        direction: Direction,
        route: str,
        principal: Principal | None = None,
        request_id: str | None = None,
    ) -> list[Screened]:
        """:class:`~espalier.core.infrastructure.contracts.TextScreen`: grounding and agents screen
        retrieved text and tool output through the policies, as chat does its messages. A scorer
        that fails blocks the text (a broken scorer must not open the door)."""
        context = CheckContext(route, request_id, principal)
        try:
            decisions = self.check(texts, direction=direction, context=context)
        except Exception:
            if not self.policies_for(direction, route):
                raise
            log.exception("a guardrail scorer failed on %s text; withholding it", direction)
            return [Screened("block", REDACTED) for _ in texts]
        return [Screened(d.action, d.text, d.scores) for d in decisions]

    # The chat path --------------------------------------------------------------------------
    def check_input(
        self, messages: Sequence[ChatMessage], context: CheckContext, stage: Stage = "all"
    ) -> list[ChatMessage]:
        """Messages as the model may see them (redacted where a policy says so).

        Flag-only policies never change what the model sees, so a caller in a hurry (a stream
        whose first token is waited for) checks ``stage="before"`` first and ``stage="flags"``
        once the model has answered; the events recorded are the same.

        :raises GuardrailBlocked: a ``block`` policy matched; nothing reached a model.
        """
        checked: list[ChatMessage] = list(messages)
        for direction, indices in (
            ("input", [i for i, m in enumerate(messages) if m.role != "tool"]),
            ("tool", [i for i, m in enumerate(messages) if m.role == "tool"]),
        ):
            decisions = self.check(
                [messages[i].content for i in indices],
                direction=direction,
                context=context,  # type: ignore[arg-type]
                stage=stage,
            )
            for i, decision in zip(indices, decisions, strict=False):
                if decision.action == "block":
                    raise _blocked(decision, direction, f"messages[{i}]")
                checked[i] = dataclasses.replace(messages[i], content=decision.text)
        return checked

    def check_prompt(self, prompt: str, context: CheckContext, stage: Stage = "all") -> str:
        decision = self.check([prompt], direction="input", context=context, stage=stage)[0]
        if decision.action == "block":
            raise _blocked(decision, "input", "prompt")
        return decision.text

    def check_output(self, generations: list[Generation], context: CheckContext) -> list[Generation]:
        """Generations as the client may see them: blocked ones become the refusal."""
        decisions = self.check([g.text for g in generations], direction="output", context=context)
        result = []
        for generation, decision in zip(generations, decisions, strict=False):
            if decision.action == "block":
                generation = Generation(
                    decision.refusal, "content_filter", generation.prompt_tokens, generation.completion_tokens
                )
            elif decision.action == "redact":
                generation = Generation(
                    REDACTED, "content_filter", generation.prompt_tokens, generation.completion_tokens
                )
            result.append(generation)
        return result

    def watch_stream(self, deltas: Iterator[TokenDelta], n: int, context: CheckContext) -> Iterator[TokenDelta]:
        """Pass a stream through, checking each candidate's text so far as it grows.

        With a ``block`` or ``redact`` output policy, every piece is checked before it is passed
        on; the piece that crosses a threshold is withheld and the candidate ends with
        ``finish_reason="content_filter"``. Flag-only policies check each candidate once, at its end.
        """
        policies = self.policies_for("output", context.route)
        if not policies:
            yield from deltas
            return
        stopping = [p for p in policies if p.action in ("block", "redact")]
        texts, stopped, ended = [""] * n, set(), set()
        try:
            for delta in deltas:
                index = delta.index
                if index in stopped:
                    continue
                if stopping and delta.text:
                    candidate = texts[index] + delta.text
                    decision = self.check([candidate], direction="output", context=context, record=False)[0]
                    if decision.action in ("block", "redact"):
                        self.check([candidate], direction="output", context=context)  # store the decision
                        stopped.add(index)
                        yield TokenDelta(index, "", finish_reason="content_filter", tokens=delta.tokens)
                        if len(stopped) == n:
                            return
                        continue
                texts[index] += delta.text
                if delta.finish_reason:
                    ended.add(index)
                yield delta
        finally:
            close = getattr(deltas, "close", None)
            if close is not None:
                close()  # stops generation when every candidate was cut off
            finished = [i for i in range(n) if i in ended and i not in stopped]
            if finished:  # the full texts, once, so flags are recorded with the final wording
                self.check([texts[i] for i in finished], direction="output", context=context)

    # Moderation ------------------------------------------------------------------------------
    def moderate(self, texts: Sequence[str], scorer_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """OpenAI-style moderation: per text, the categories and scores of each chosen scorer.

        A category is flagged when it reaches the threshold of an ``input`` policy on that scorer
        (0.5 when none names it). Nothing is stored: a consumer checking text is not a decision.
        """
        names = list(scorer_names or self._moderation_scorers())
        for name in names:
            if name not in self.scorers:
                raise NotFound(
                    f"no guardrail scorer '{name}' (available: {', '.join(self.scorers.names())})",
                    code="model_not_found",
                    details={"param": "model"},
                )
        thresholds: dict[tuple[str, str], float] = {}
        for policy in self.policies:
            if policy.direction == "input":
                for category, value in policy.thresholds.items():
                    thresholds.setdefault((policy.scorer, category), value)
        results = [{"categories": {}, "category_scores": {}, "scorers": {}} for _ in texts]
        for name in names:
            scorer = self.scorers.get(name)
            for result, score in zip(results, scorer.score(list(texts), direction="input"), strict=False):
                result["scorers"][name] = score.version
                for category, value in score.scores.items():
                    threshold = thresholds.get((name, category), thresholds.get((name, "*"), 0.5))
                    value = float(value)
                    if value >= result["category_scores"].get(category, -1.0):
                        result["category_scores"][category] = value
                    result["categories"][category] = result["categories"].get(category, False) or value >= threshold
        for result in results:
            result["flagged"] = any(result["categories"].values())
        return results

    def _moderation_scorers(self) -> list[str]:
        configured = [p.scorer for p in self.policies if p.direction == "input"]
        return list(dict.fromkeys(configured)) or self.scorers.names()[:1]

    # Reading events --------------------------------------------------------------------------
    def events(
        self, *, request_id: str | None = None, action: str | None = None, limit: int = 100
    ) -> list[GuardrailEvent]:
        from sqlmodel import select

        with session_scope(self.engine) as session:
            query = select(GuardrailEvent).order_by(GuardrailEvent.at.desc()).limit(limit)
            if request_id:
                query = query.where(GuardrailEvent.request_id == request_id)
            if action:
                query = query.where(GuardrailEvent.action == action)
            return list(session.exec(query))


def _event(
    policy: Policy,
    score: GuardrailScore,
    action: Action,
    hits: list[str],
    text: str,
    direction: str,
    context: CheckContext,
) -> GuardrailEvent:
    return GuardrailEvent(
        request_id=context.request_id,
        owner_key_id=context.principal.key_id if context.principal else None,
        direction=direction,
        route=context.route,
        policy=policy.name,
        scorer=policy.scorer,
        scorer_version=(score.version or "")[:300],
        action=action,
        categories=hits,
        scores={k: round(float(v), 6) for k, v in score.scores.items()},
        text=text[:MAX_EVENT_TEXT],
    )


def _blocked(decision: Decision, direction: str, param: str) -> GuardrailBlocked:
    policy = decision.policy
    assert policy is not None
    return GuardrailBlocked(
        f"{policy.refusal} ({direction} {param} was refused by policy '{policy.name}'; rephrase it)",
        details={"param": param, "policy": policy.name, "events": decision.events},
    )


# Trained guardrail models --------------------------------------------------------------------
def record_trained_model(folder: Path, kind: str, card: Mapping[str, Any]) -> Path:
    """Make a trained checkpoint the one served for ``kind`` (``toxicity``, ``injection``) from the
    next start on, unless an operator configured a checkpoint explicitly."""
    folder.mkdir(parents=True, exist_ok=True)
    pointer = folder / f"{kind}.json"
    partial = pointer.with_suffix(".partial")
    partial.write_text(json.dumps({"kind": kind, **dict(card)}, indent=2, default=str) + "\n")
    os.replace(partial, pointer)
    return pointer


def trained_model(folder: Path, kind: str) -> dict[str, Any] | None:
    """The card of the model recorded for ``kind``, or None when none was trained (or it moved)."""
    pointer = folder / f"{kind}.json"
    if not pointer.is_file():
        return None
    try:
        card = json.loads(pointer.read_text())
        checkpoint = Path(card["artifacts"]["checkpoint"])
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring %s: not a trained-model record", pointer)
        return None
    if not checkpoint.is_file():
        log.warning("trained %s model %s is gone; train again or set the checkpoint setting", kind, checkpoint)
        return None
    return card


def _in_stage(policy: Policy, stage: Stage) -> bool:
    if stage == "before":
        return policy.action != "flag"
    if stage == "flags":
        return policy.action == "flag"
    return True
