"""Agent runs: the context an agent works in, and the stored trace of what it did.

An agent (``register_agents``) gets an :class:`AgentContext` as ``context``. Through it, and only
through it, it asks the model (:meth:`AgentContext.generate`), calls tools
(:meth:`AgentContext.call_tool`) and records steps (:meth:`AgentContext.record_step`). That keeps
the rules in one place for every agent:

* only the tools allowed for the run can be called; anything else is an error observation;
* arguments are checked against the tool's schema before it runs;
* tool output is data: it goes through the guardrail policies for the ``tool`` direction on the
  ``agent`` route (by default, with the ``injection`` scorer loaded, output that reads as
  instructions is withheld from the model), and what reaches the model is quoted line by line
  so it cannot pose as the transcript's own ``Action:`` lines;
* each step records which observation the model had last seen (``led_by``) and which earlier
  observations its arguments were copied from;
* step and wall-clock limits, and cancellation (a client that went away), end the run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlmodel import select

from espalier.core.infrastructure.audit import AuditLog
from espalier.core.infrastructure.contracts import Agent, ChatMessage, GenerationParams, Screened, TextScreen
from espalier.core.infrastructure.db.base import new_id, utcnow
from espalier.core.infrastructure.db.engine import session_scope
from espalier.core.infrastructure.errors import EspalierError, Forbidden, InvalidInput, NotFound
from espalier.core.infrastructure.identity import Principal
from espalier.core.infrastructure.registry import Registry
from espalier.core.tools.agents.tables import AgentRun, AgentStep
from espalier.core.tools.toolbox import ToolService
from espalier.core.tools.untrusted import quote_data

if TYPE_CHECKING:
    from espalier.core.infrastructure.settings import Settings
    from espalier.core.sources.models.service import ModelService

log = logging.getLogger("espalier.agents")

MAX_QUESTION = 8000
MAX_OBSERVATION_FOR_MODEL = 2000
STATUSES = ("running", "ok", "step_limit", "time_limit", "cancelled", "error")


@dataclass
class AgentOutcome:
    """What an agent's ``run`` returns (a bare string means ``AgentOutcome(answer, "ok")``)."""

    answer: str | None
    status: str = "ok"
    error: str | None = None


@dataclass
class Observation:
    """A tool's result as the trace keeps it (``text``) and as the model may see it (``for_model``)."""

    tool: str
    arguments: dict[str, Any]
    text: str
    for_model: str
    is_error: bool
    duration_ms: float
    injection_score: float | None = None
    withheld: bool = False
    data: Any = None


def quote(text: str) -> str:
    """Tool output as a quoted block (:func:`~espalier.core.tools.untrusted.quote_data`): every line starts
    with '| ', so none can pose as an Action, and chat-template markers are defused."""
    return quote_data(text, limit=MAX_OBSERVATION_FOR_MODEL)


def injection_score(screened: Screened | None) -> float | None:
    """The ``injection`` scorer's score of a screened text, kept in the trace (None: not scored)."""
    if screened is None:
        return None
    value = screened.scores.get("injection", {}).get("injection")
    return None if value is None else float(value)


@dataclass
class AgentContext:
    """Everything an agent may use during one run. Built by :class:`AgentService`."""

    run_id: str
    agent: str
    question: str
    model: str
    tools: dict[str, Any]
    max_steps: int
    timeout_s: float
    collection: str | None
    options: dict[str, Any]
    _service: AgentService
    _cancel: threading.Event
    _on_step: Callable[[dict[str, Any]], None] | None = None
    principal: Principal | None = None  # whose run: tools read data with this key's rights
    steps: list[dict[str, Any]] = field(default_factory=list)
    #: the step whose output first brought untrusted text into the run (None: none yet)
    untrusted_since: int | None = None
    _model_ms: float = 0.0
    deadline: float = float("inf")  # set when the run starts, after the model is loaded

    # Limits ------------------------------------------------------------------------------------
    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def should_stop(self) -> str | None:
        """``"cancelled"``, ``"time_limit"``, ``"step_limit"`` or None."""
        if self.cancelled():
            return "cancelled"
        if self.time_left() <= 0:
            return "time_limit"
        if len(self.steps) >= self.max_steps:
            return "step_limit"
        return None

    # The model ---------------------------------------------------------------------------------
    def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int = 256,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
    ) -> str:
        """One completion from the run's model, greedy by default; stops at the run's limits."""
        model, _version = self._service.models.load(self.model)
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=temperature,
            stop=tuple(stop)[:4],
            n=1,
            seed=0,
            cache_scope=self.principal.key_id if self.principal else None,
        )
        started = time.perf_counter()
        generations = model.generate(list(messages), params, lambda: self.cancelled() or self.time_left() <= 0)
        self._model_ms += (time.perf_counter() - started) * 1000
        return generations[0].text if generations else ""

    # Tools -------------------------------------------------------------------------------------
    def call_tool(self, name: str, arguments: Any) -> Observation:
        """Run an allowed tool. Unknown tools and bad arguments come back as error observations."""
        if name not in self.tools:
            allowed = ", ".join(sorted(self.tools))
            text = f"'{name}' is not an available action. Use one of: {allowed}."
            return Observation(name, {}, text, text, True, 0.0)
        if self.collection and name in ("search", "lookup") and isinstance(arguments, dict):
            arguments = {"collection": self.collection, **arguments}
        tool = self.tools[name]
        if (
            self.untrusted_since is not None
            and getattr(tool, "sensitive", False)
            and name not in self._service.settings.agent_sensitive_after_untrusted
        ):
            # A control-flow rule, not string matching: once retrieved text is in the context, it
            # could steer any wording of a call, so code and data tools stay off for this run.
            text = (
                f"Refused: this run has read untrusted text (the output of step {self.untrusted_since}), so the "
                f"sensitive tool {name} is off for the rest of the run. Answer from what you have; a new run "
                "can call it before reading documents."
            )
            data = {"refused": True, "untrusted_since": self.untrusted_since}
            return Observation(name, arguments if isinstance(arguments, dict) else {}, text, text, True, 0.0, data=data)
        try:
            call = self._service.tool_service.call(name, arguments, by=self.principal)
        except (InvalidInput, Forbidden) as exc:
            return Observation(
                name, arguments if isinstance(arguments, dict) else {}, exc.message, exc.message, True, 0.0
            )
        text = call.result.output
        if text and not getattr(tool, "trusted_output", False) and self.untrusted_since is None:
            self.untrusted_since = len(self.steps)  # the step this observation is recorded as
        screened = self._service.screen_output(text, self) if text and not call.result.is_error else None
        score = injection_score(screened)
        withheld = screened is not None and screened.blocked
        for_model = (
            f"(withheld: the {name} output reads like instructions to the assistant"
            + (f", prompt-injection score {score:.2f}" if score is not None else "")
            + "; it is untrusted data and was not shown)"
            if withheld
            else quote(screened.text if screened is not None else text)
        )
        return Observation(
            name,
            call.arguments,
            text,
            for_model,
            call.result.is_error,
            call.duration_ms,
            score,
            withheld,
            call.result.data,
        )

    # The trace ---------------------------------------------------------------------------------
    def record_step(
        self,
        *,
        thought: str = "",
        action: str | None = None,
        arguments: dict[str, Any] | None = None,
        observation: Observation | str = "",
        raw: str = "",
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store one step now (the trace survives a crash mid-run) and stream it to a listener."""
        arguments = dict(arguments or {})
        led_by = next((s["number"] for s in reversed(self.steps) if s["observation"]), None)
        extra = dict(extra or {})
        sources = self._argument_sources(arguments)
        if sources:
            extra["argument_sources"] = sources
        if isinstance(observation, Observation):
            text, is_error, tool_ms, score = (
                observation.text,
                observation.is_error,
                observation.duration_ms,
                observation.injection_score,
            )
            if observation.withheld:
                extra["withheld_from_model"] = True
        else:
            text, is_error, tool_ms, score = observation, False, 0.0, None
        step = AgentStep(
            run_id=self.run_id,
            number=len(self.steps),
            thought=thought,
            action=action,
            arguments=arguments,
            observation=text,
            is_error=is_error,
            led_by=led_by,
            injection_score=score,
            model_ms=round(self._model_ms, 2),
            tool_ms=tool_ms,
            raw=raw,
            extra=extra,
        )
        self._model_ms = 0.0
        out = self._service.store_step(step)
        self.steps.append(out)
        if self._on_step is not None:
            self._on_step(out)
        return out

    def _argument_sources(self, arguments: dict[str, Any]) -> dict[str, list[int]]:
        """For each string argument not in the question, the earlier steps whose output held it."""
        sources: dict[str, list[int]] = {}
        for key, value in arguments.items():
            if not isinstance(value, str) or len(value.strip()) < 4 or value.lower() in self.question.lower():
                continue
            hits = [s["number"] for s in self.steps if value.lower() in s["observation"].lower()]
            if hits:
                sources[key] = hits
        return sources


def step_out(step: AgentStep) -> dict[str, Any]:
    return {
        "number": step.number,
        "thought": step.thought,
        "action": step.action,
        "arguments": step.arguments,
        "observation": step.observation,
        "is_error": step.is_error,
        "led_by": step.led_by,
        "injection_score": step.injection_score,
        "model_ms": step.model_ms,
        "tool_ms": step.tool_ms,
        "raw": step.raw,
        "extra": step.extra,
        "created_at": step.created_at,
    }


def run_out(run: AgentRun, steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out = {
        "id": run.id,
        "agent": run.agent,
        "question": run.question,
        "model": run.model,
        "tools": run.tools,
        "options": run.options,
        "status": run.status,
        "answer": run.answer,
        "error": run.error,
        "steps": run.steps,
        "duration_ms": run.duration_ms,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
    }
    if steps is not None:
        out["trace"] = steps
    return out


class AgentService:
    def __init__(
        self,
        engine: Engine,
        agents: Registry[Agent],
        tool_service: ToolService,
        models: ModelService,
        screen: TextScreen,
        settings: Settings,
        audit: AuditLog | None = None,
    ):
        self.engine = engine
        self.agents = agents
        self.tool_service = tool_service
        self.models = models
        self.screen = screen
        self.audit = audit
        self.settings = settings

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": e.item.name,
                "description": e.item.description,
                "plugin": e.plugin,
                "tools": list(getattr(e.item, "tools", []) or []),
            }
            for e in sorted(self.agents, key=lambda e: e.item.name)
        ]

    def screen_output(self, text: str, context: AgentContext) -> Screened:
        """A tool's output through the policies for the ``tool`` direction on the ``agent`` route."""
        [screened] = self.screen.screen([text], direction="tool", route="agent", principal=context.principal)
        return screened

    # Running -----------------------------------------------------------------------------------
    def prepare(
        self,
        name: str,
        question: str,
        principal: Principal | None,
        *,
        model: str | None = None,
        tools: Sequence[str] | None = None,
        max_steps: int | None = None,
        timeout_s: float | None = None,
        collection: str | None = None,
        options: dict[str, Any] | None = None,
        cancel: threading.Event | None = None,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        via: str | None = None,
    ) -> AgentContext:
        """Check the request (every problem is a 4xx before anything is stored) and open the run
        (audited as ``agent.run``, whatever the entry point)."""
        agent = self.agents.get(name)
        if not question.strip() or len(question) > MAX_QUESTION:
            raise InvalidInput(f"question must be 1-{MAX_QUESTION} characters", code="invalid_question")
        model = model or getattr(agent, "model", None) or self.settings.default_model
        self.models.info(model)  # NotFound lists what is registered
        defaults = list(getattr(agent, "tools", []) or [])
        wanted = list(tools) if tools is not None else defaults
        unknown = [t for t in wanted if t not in self.tool_service.tools]
        if unknown:
            raise InvalidInput(f"unknown tools {unknown}; GET /api/tools lists them", code="invalid_tools")
        if tools is not None:
            for tool in wanted:  # asked for by name: a tool this key may not run is a 403 now
                self.tool_service.authorize(tool, principal)
        else:  # the agent's defaults: those this key may not run are left out of its run
            allowed = self.tool_service.allowed(principal)
            wanted = [t for t in wanted if t in allowed]
        if "finish" in self.tool_service.tools and "finish" not in wanted and getattr(agent, "needs_finish", True):
            wanted.append("finish")
        limit_steps = max_steps or self.settings.agent_max_steps
        limit_time = timeout_s or self.settings.agent_timeout_s
        if not 1 <= limit_steps <= 50:
            raise InvalidInput("max_steps must be between 1 and 50")
        if not 0 < limit_time <= self.settings.agent_timeout_s:
            raise InvalidInput(f"timeout_s must be in (0, {self.settings.agent_timeout_s}]")
        run = AgentRun(
            id=new_id("run"),
            agent=name,
            owner_key_id=principal.key_id if principal else None,
            question=question,
            model=model,
            tools=sorted(wanted),
            options={"max_steps": limit_steps, "timeout_s": limit_time, "collection": collection, **(options or {})},
        )
        with session_scope(self.engine) as session:
            session.add(run)
        if self.audit is not None and principal is not None:
            self.audit.record(principal, "agent.run", run.id, agent=name, via=via)
        return AgentContext(
            run_id=run.id,
            agent=name,
            question=question,
            model=model,
            tools={t: self.tool_service.get(t) for t in wanted},
            max_steps=limit_steps,
            timeout_s=limit_time,
            collection=collection,
            options=dict(options or {}),
            _service=self,
            _cancel=cancel or threading.Event(),
            _on_step=on_step,
            principal=principal,
        )

    def execute(self, context: AgentContext) -> dict[str, Any]:
        """Run a prepared agent to its end and store the outcome. Never raises for the agent's faults."""
        agent = self.agents.get(context.agent)
        started = time.perf_counter()
        try:
            # loading (or converting) weights is not the agent's time: the clock starts after it
            self.models.load(context.model)
            context.deadline = time.monotonic() + context.timeout_s
            outcome = agent.run(context.question, context=context)
            if not isinstance(outcome, AgentOutcome):
                outcome = AgentOutcome(None if outcome is None else str(outcome))
        except EspalierError as exc:
            outcome = AgentOutcome(None, "error", exc.message)
        except Exception as exc:
            log.exception("agent %s failed in run %s", agent.name, context.run_id)
            outcome = AgentOutcome(None, "error", f"the agent failed: {type(exc).__name__}")
        if context.cancelled() and outcome.status == "ok" and outcome.answer is None:
            outcome.status = "cancelled"
        with session_scope(self.engine) as session:
            run = session.get(AgentRun, context.run_id)
            run.status = outcome.status if outcome.status in STATUSES else "error"
            run.answer = outcome.answer
            run.error = outcome.error
            run.steps = len(context.steps)
            run.duration_ms = round((time.perf_counter() - started) * 1000, 2)
            run.finished_at = utcnow()
            session.add(run)
        return run_out(run, context.steps)

    def run(self, name: str, question: str, principal: Principal | None, **kwargs: Any) -> dict[str, Any]:
        return self.execute(self.prepare(name, question, principal, **kwargs))

    # Storage -----------------------------------------------------------------------------------
    def store_step(self, step: AgentStep) -> dict[str, Any]:
        with session_scope(self.engine) as session:
            session.add(step)
            session.flush()
            return step_out(step)

    def _visible(self, run: AgentRun | None, principal: Principal | None) -> bool:
        if run is None:
            return False
        return principal is None or principal.has_role("admin") or run.owner_key_id == principal.key_id

    def get(self, run_id: str, principal: Principal | None) -> dict[str, Any]:
        with session_scope(self.engine) as session:
            run = session.get(AgentRun, run_id)
            if not self._visible(run, principal):
                raise NotFound(f"no agent run '{run_id}' for this key")
            steps = session.exec(select(AgentStep).where(AgentStep.run_id == run_id).order_by(AgentStep.number))
            return run_out(run, [step_out(s) for s in steps])

    def list(
        self, principal: Principal | None, *, agent: str | None = None, limit: int = 50, all_keys: bool = False
    ) -> list[dict[str, Any]]:
        """Newest first. A key sees its own runs; an admin may ask for everyone's (``all_keys``)."""
        with session_scope(self.engine) as session:
            query = select(AgentRun).order_by(AgentRun.created_at.desc(), AgentRun.id).limit(limit)
            if agent:
                query = query.where(AgentRun.agent == agent)
            if principal is not None and not (all_keys and principal.has_role("admin")):
                query = query.where(AgentRun.owner_key_id == principal.key_id)
            return [run_out(run) for run in session.exec(query)]
