"""The running platform: settings, database, plugins and their contributions, jobs.

One object the server and the CLI both build. Everything a service or a plugin needs hangs off
it; nothing is global.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import cached_property
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from espalier.core import schema  # noqa: F401  (every table on the metadata)
from espalier.core.infrastructure import contracts
from espalier.core.infrastructure.audit import AuditLog
from espalier.core.infrastructure.contracts import ChainSpec, TemplateSpec
from espalier.core.infrastructure.db.engine import create_db_engine
from espalier.core.infrastructure.db.migrate import is_up_to_date, upgrade
from espalier.core.infrastructure.errors import PluginError, Unavailable
from espalier.core.infrastructure.events import announce_feedback
from espalier.core.infrastructure.jobs.service import JobService, JobWorker
from espalier.core.infrastructure.plugin_host import PluginHost, create_plugin_manager
from espalier.core.infrastructure.ratelimit import RateLimiter
from espalier.core.infrastructure.registry import Registry
from espalier.core.infrastructure.settings import Settings
from espalier.core.interface.chat.service import ChatService, ConversationService
from espalier.core.interface.console_sessions.service import ConsoleSessionService
from espalier.core.interface.guardrails.flags import GuardrailFlagService
from espalier.core.interface.guardrails.policies import GuardrailService, parse_policies
from espalier.core.interface.keys import KeyService
from espalier.core.interface.usage import UsageService
from espalier.core.sources.feedback import FeedbackService, PairStore
from espalier.core.sources.labeling.service import GENERATE_JOB, LabelingService
from espalier.core.sources.learning.evaluation import EvaluationService
from espalier.core.sources.models.service import ModelService
from espalier.core.sources.rag.extract import DocumentTypes
from espalier.core.sources.rag.service import RagService
from espalier.core.sources.reward import RewardModelService
from espalier.core.sources.templates.service import TemplateService
from espalier.core.tools.agents.service import AgentService
from espalier.core.tools.chains.service import ChainService, chains_from_settings, validate_chain
from espalier.core.tools.toolbox import ToolService

log = logging.getLogger("espalier.platform")


class Platform:
    def __init__(
        self,
        settings: Settings,
        *,
        extra_plugins: list[tuple[str, Any]] | None = None,
        load_entry_points: bool = True,
    ):
        self.settings = settings
        self.state: dict[str, Any] = {}
        self.plugins: PluginHost = create_plugin_manager(
            settings, extra_plugins=extra_plugins, load_entry_points=load_entry_points
        )
        self.engine: Engine = create_db_engine(
            settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        self.keys = KeyService(self.engine)
        self.audit = AuditLog(self.engine)
        self.worker: JobWorker | None = None
        #: Plugins hear of events before the call returns (the CLI) or off the request path (a server).
        self.events_inline = False
        self.started = False

    def _announce(self, hook: str, event: object) -> None:
        """An ``on_*`` event for the plugins (core/infrastructure/events.py)."""
        from espalier.core.infrastructure.events import announce

        announce(self, hook, event)

    def _collect(self, hook: str, kind: str, protocol: type) -> Registry[Any]:
        """One ``register_*`` hook's contributions; implementations get the settings and the platform."""
        return self.plugins.collect(hook, kind, protocol, settings=self.settings, platform=self)

    # Contributions, collected once on first use ------------------------------------------
    @cached_property
    def model_providers(self) -> Registry[contracts.ModelProvider]:
        return self._collect("register_model_providers", "model provider", contracts.ModelProvider)

    @cached_property
    def builtin_models(self) -> Registry[contracts.ModelSpec]:
        return self._collect("register_models", "model", contracts.ModelSpec)

    @cached_property
    def models(self) -> ModelService:
        return ModelService(
            self.engine,
            self.model_providers,
            self.builtin_models,
            str(self.settings.models_dir),
            self.audit,
            max_loaded_versions=self.settings.max_loaded_versions,
        )

    @cached_property
    def builtin_templates(self) -> Registry[TemplateSpec]:
        return self._collect("register_prompt_templates", "prompt template", TemplateSpec)

    @cached_property
    def templates(self) -> TemplateService:
        return TemplateService(self.engine, self.audit)

    @cached_property
    def chat(self) -> ChatService:
        from espalier.core.tools.grounding import Grounder

        return ChatService(
            self.engine,
            self.models,
            self.templates,
            grounder=Grounder(self.rag, lambda: self.guardrail_service, lambda: self.retrievers),
            default_model=self.settings.default_model,
            guardrails=self.guardrail_service,
            announce=self._announce,
        )

    @cached_property
    def conversations(self) -> ConversationService:
        return ConversationService(self.engine)

    @cached_property
    def limiter(self) -> RateLimiter:
        """Request and feedback rate limits, shared through Redis when it is set."""
        return RateLimiter(self.settings.redis_url, when_store_down=self.settings.rate_limit_when_store_down)

    @cached_property
    def feedback(self) -> FeedbackService:
        return FeedbackService(
            self.engine,
            rate_limit_per_minute=self.settings.feedback_rate_limit_per_minute,
            limiter=self.limiter,
            announce=lambda event: announce_feedback(self, event),
        )

    @cached_property
    def labeling(self) -> LabelingService:
        """Labeling tasks: generated candidates, labelers, leases, progress, agreement."""
        return LabelingService(
            self.engine,
            chat=lambda: self.chat,
            conversations=self.conversations,
            feedback=self.feedback,
            submit_job=lambda *a, **k: self.jobs.submit(*a, **k),
            default_model=self.settings.default_model,
            check_model=self._check_model_name,
            audit=self.audit,
        )

    def _check_model_name(self, name: str) -> None:
        """A registered model, or a built-in one (registered when a server starts)."""
        if name not in self.builtin_models:
            self.models.resolve(name)

    @cached_property
    def pairs(self) -> PairStore:
        return PairStore(
            self.engine,
            self.audit,
            announce=lambda event: announce_feedback(self, event),
            exclude_below_consensus=self.settings.exclude_below_consensus,
        )

    @cached_property
    def reward_models(self) -> RewardModelService:
        return RewardModelService(
            self.engine,
            pairs=lambda: self.pairs,
            jobs=lambda: self.jobs,
            audit=self.audit,
            ai_pair_weight=self.settings.ai_pair_weight,
            loader=lambda: self.reward_scorers.choose(self.settings.reward_scorer, "ESPALIER_REWARD_SCORER"),
        )

    @cached_property
    def reward_scorers(self) -> Registry[contracts.RewardScorerLoader]:
        return self._collect("register_reward_scorers", "reward scorer", contracts.RewardScorerLoader)

    @cached_property
    def embedders(self) -> Registry[contracts.Embedder]:
        return self._collect("register_embedders", "embedder", contracts.Embedder)

    @cached_property
    def retrievers(self) -> Registry[contracts.Retriever]:
        return self._collect("register_retrievers", "retriever", contracts.Retriever)

    @cached_property
    def vector_stores(self) -> Registry[contracts.VectorStore]:
        return self._collect("register_vector_stores", "vector store", contracts.VectorStore)

    @cached_property
    def keyword_indexes(self) -> Registry[contracts.KeywordIndex]:
        return self._collect("register_keyword_indexes", "keyword index", contracts.KeywordIndex)

    @cached_property
    def document_extractors(self) -> Registry[contracts.DocumentExtractor]:
        return self._collect("register_document_extractors", "document extractor", contracts.DocumentExtractor)

    @cached_property
    def document_types(self) -> DocumentTypes:
        """The formats ingestion reads: plain text and Markdown, and the registered extractors'."""
        return DocumentTypes(entry.item for entry in self.document_extractors)

    @cached_property
    def rag(self) -> RagService:
        """Collections, documents, ingestion and search (the chosen vector store and keyword index)."""
        return RagService(
            self.engine,
            lambda: self.vector_stores.choose(self.settings.vector_store, "ESPALIER_VECTOR_STORE"),
            lambda: self.keyword_indexes.choose(self.settings.keyword_index, "ESPALIER_KEYWORD_INDEX"),
            self.audit,
            embedder=lambda: self.embedders.choose(self.settings.embedder, "ESPALIER_EMBEDDER"),
            load_model=lambda name: self.models.load(name)[0],
            default_model=self.settings.default_model,
            document_types=lambda: self.document_types,
        )

    @cached_property
    def tools(self) -> Registry[contracts.Tool]:
        return self._collect("register_tools", "tool", contracts.Tool)

    @cached_property
    def agents(self) -> Registry[contracts.Agent]:
        return self._collect("register_agents", "agent", contracts.Agent)

    @cached_property
    def toolbox(self) -> ToolService:
        """Lists, checks and calls the registered tools (the API, agents and chains use it)."""
        return ToolService(self.tools, self.audit, roles=self.settings.tool_roles)

    @cached_property
    def agent_runs(self) -> AgentService:
        """Runs agents under the platform's rules and keeps their traces."""
        return AgentService(
            self.engine, self.agents, self.toolbox, self.models, self.guardrail_service, self.settings, self.audit
        )

    @cached_property
    def chain_specs(self) -> Registry[ChainSpec]:
        registry = self._collect("register_chains", "chain", ChainSpec)
        for entry in registry:
            validate_chain(entry.item)
        for spec in chains_from_settings(self.settings.chains):
            registry.add(spec, plugin="settings")
        return registry

    @cached_property
    def chains(self) -> ChainService:
        """Runs named chains (template, memory, tools) and keeps their sessions."""
        return ChainService(self.engine, self.chain_specs, self.chat, self.agent_runs, self.settings)

    @cached_property
    def guardrails(self) -> Registry[contracts.Guardrail]:
        return self._collect("register_guardrails", "guardrail", contracts.Guardrail)

    @cached_property
    def guardrail_service(self) -> GuardrailService:
        """Policies over the registered scorers; a bad policy stops start-up with its message."""
        policies = parse_policies(self.settings.guardrail_policies, self.guardrails)
        return GuardrailService(
            self.engine,
            self.guardrails,
            policies,
            store_allowed=self.settings.guardrail_store_allowed,
            announce=self._announce,
        )

    @cached_property
    def evaluations(self) -> EvaluationService:
        return EvaluationService(self.engine)

    @cached_property
    def plotters(self) -> Registry[contracts.Plotter]:
        return self._collect("register_plotters", "plotter", contracts.Plotter)

    def plotter_for(self, kind: str) -> contracts.Plotter | None:
        """The first registered plotter that draws ``kind`` evaluations; None when none is loaded."""
        return next((entry.item for entry in self.plotters if kind in entry.item.kinds), None)

    @cached_property
    def trainers(self) -> Registry[contracts.Trainer]:
        return self._collect("register_trainers", "trainer", contracts.Trainer)

    @cached_property
    def job_kinds(self) -> Registry[contracts.JobKind]:
        kinds = self._collect("register_job_kinds", "job kind", contracts.JobKind)
        kinds.add(
            contracts.JobKind(
                GENERATE_JOB,
                run=lambda job: self.labeling.generate(job),
                description="Generate the candidates of a labeling task's items",
            ),
            plugin="espalier",
        )
        for entry in self.trainers:
            trainer = entry.item
            kinds.add(
                contracts.JobKind(
                    f"train:{trainer.name}",
                    run=trainer.train,
                    description=trainer.description,
                    finished=getattr(trainer, "finished", None),
                ),
                plugin=entry.plugin,
            )
        return kinds

    @cached_property
    def commands(self) -> Registry[contracts.Command]:
        return self._collect("register_commands", "command", contracts.Command)

    @cached_property
    def routes(self) -> list[tuple[Any, str]]:
        return self.plugins.collect_list("register_routes", platform=self)

    @cached_property
    def jobs(self) -> JobService:
        return JobService(
            self.engine,
            self.job_kinds,
            self.settings.artifacts_dir,
            self.audit,
            max_queued_per_kind=self.settings.max_queued_jobs_per_kind,
            max_queued_per_key=self.settings.max_queued_jobs_per_key,
            announce=self._announce,
        )

    @cached_property
    def console_sessions(self) -> ConsoleSessionService:
        return ConsoleSessionService(
            self.engine, self.keys, self.audit, lifetime=timedelta(minutes=self.settings.console_session_minutes)
        )

    @cached_property
    def usage(self) -> UsageService:
        return UsageService(self.engine)

    @cached_property
    def guardrail_flags(self) -> GuardrailFlagService:
        return GuardrailFlagService(self.engine, self.audit)

    def collect_all(self) -> None:
        """Collect every contribution now, so duplicate names fail at start-up, not on first use."""
        for name in (
            "model_providers",
            "builtin_models",
            "builtin_templates",
            "embedders",
            "retrievers",
            "vector_stores",
            "keyword_indexes",
            "document_extractors",
            "tools",
            "agents",
            "chain_specs",
            "guardrails",
            "guardrail_service",
            "plotters",
            "reward_scorers",
            "trainers",
            "job_kinds",
            "commands",
            "routes",
        ):
            getattr(self, name)

    # Life cycle ---------------------------------------------------------------------------
    def migrate(self) -> None:
        upgrade(self.engine)

    def start(self, *, migrate: bool = True, run_jobs: bool = True) -> Platform:
        if self.started:
            return self
        self.settings.ensure_dirs()
        if migrate:
            self.migrate()
        elif not is_up_to_date(self.engine):
            raise Unavailable("the database schema is not up to date: run 'espalier db upgrade'")
        self.collect_all()
        self.models.sync_builtins()
        for entry in self.builtin_templates:
            self.templates.ensure(entry.item)
        failed = self.plugins.call_each("startup", platform=self)
        if failed and self.settings.strict_plugins:
            raise PluginError(
                "plugin startup failed: "
                + "; ".join(f"'{f.name}': {f.error}" for f in failed)
                + " (ESPALIER_STRICT_PLUGINS is on)"
            )
        self.plugins.failures.extend(failed)  # /readyz and /api/plugins report them
        if run_jobs:
            self.worker = JobWorker(self.jobs, threads=self.settings.job_workers)
            self.worker.start()
        self.started = True
        return self

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self.started:
            self.plugins.call_each("shutdown", platform=self)  # each on its own, failures logged by name
        self.started = False
        self.engine.dispose()

    def database_ok(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except Exception:
            return False
