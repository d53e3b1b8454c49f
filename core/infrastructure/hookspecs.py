"""Every hook a plugin can implement. The plugin reference (``docs/plugins.md``) is checked against
this module by a test, so each hook carries its purpose, arguments, return value, version and an
example.

Contribution hooks (``register_*``) receive a ``register`` callback. Call it once per item; the host
validates the item, tags it with your plugin's name, and refuses start-up when two plugins
contribute the same name (the message names both). ``register(item, default=True)`` offers the
item as the one to use where a setting picks one of its kind and names none (the embedder, the
agent chains run); the first offer wins, and built-ins offer theirs with ``trylast``. An
implementation may accept fewer arguments
than the specification lists; new arguments are only ever added, never removed without a warning
release first.

A ``register_*`` hook may take ``platform``, the running platform: a contribution that needs the
platform's services when it is called takes it in its constructor, ``register(MyTrainer(platform))``;
there is no binding step later.

Hooks are synchronous (pluggy has no async). Return values, or objects with async methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from espalier.core.infrastructure.contracts import (
        Agent,
        ChainSpec,
        Command,
        CompletionEvent,
        DocumentExtractor,
        Embedder,
        FeedbackEvent,
        Guardrail,
        GuardrailDecisionEvent,
        JobEvent,
        JobKind,
        KeywordIndex,
        ModelProvider,
        ModelSpec,
        Plotter,
        Retriever,
        RewardScorerLoader,
        TemplateSpec,
        Tool,
        Trainer,
        VectorStore,
    )
    from espalier.core.infrastructure.settings import Settings
    from espalier.core.platform import Platform

hookspec = pluggy.HookspecMarker("espalier")

SINCE = "0.1.0"


@hookspec
def register_model_providers(register: Callable[[ModelProvider], None], platform: Platform) -> None:
    """Contribute model providers: objects that load a registered model for serving.

    :param register: call ``register(provider)`` for each
        :class:`~espalier.core.infrastructure.contracts.ModelProvider`. The provider's ``name`` is
        what ``espalier models add --provider NAME`` refers to.
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing; contributions go through ``register``.
    :since: 0.1.0

    Example::

        @hookimpl
        def register_model_providers(register):
            register(MyVLLMProvider(name="my-vllm"))
    """


@hookspec
def register_models(register: Callable[[ModelSpec], None], platform: Platform) -> None:
    """Ship ready-to-serve models with your plugin (for example weights inside your package).

    Each appears in ``GET /v1/models`` without an operator adding it, cannot be removed (disable
    the plugin instead), and is loaded by the provider its ``provider`` field names.

    :param register: call ``register(ModelSpec(name, provider, source, ...))`` for each model.
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing.
    :since: 0.1.0

    Example::

        @hookimpl
        def register_models(register):
            register(ModelSpec(name="tiny-llama", provider="transformers",
                               source=str(Path(__file__).parent / "tiny-llama.gguf")))
    """


@hookspec
def register_prompt_templates(register: Callable[[TemplateSpec], None], platform: Platform) -> None:
    """Ship prompt templates (for example chain-of-thought few-shot prompts for a domain).

    Each is saved as version 1 on first start unless a template of that name exists; operators
    can then save newer versions. Requests select one with ``espalier.template``.

    :param register: call ``register(TemplateSpec(name, user, system, examples, description))``;
        ``user`` and ``system`` are Jinja2 (sandboxed) with the request's variables.
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing.
    :since: 0.1.0

    Example::

        @hookimpl
        def register_prompt_templates(register):
            register(TemplateSpec(
                name="translate-fr", system="You translate into French.", user="{{ input }}",
                examples=[{"question": "Good morning", "answer": "Bonjour"}],
            ))
    """


@hookspec
def register_embedders(register: Callable[[Embedder], None], platform: Platform) -> None:
    """Contribute text embedders (used by ``/v1/embeddings`` and by collections).

    :param register: call ``register(embedder)`` for each :class:`~espalier.core.infrastructure.contracts.Embedder`;
        ``register(embedder, default=True)`` offers it as the one collections use while
        ``ESPALIER_EMBEDDER`` is unset.
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing.
    :since: 0.1.0

    Example::

        @hookimpl
        def register_embedders(register):
            register(MyEmbedder(name="e5-small", dimensions=384))
    """


@hookspec
def register_retrievers(register: Callable[[Retriever], None], platform: Platform) -> None:
    """Contribute retrievers: ways to find passages for a query (vector, keyword, SQL, web...).

    :param register: call ``register(retriever)`` for each :class:`~espalier.core.infrastructure.contracts.Retriever`.
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing.
    :since: 0.1.0

    Example::

        @hookimpl
        def register_retrievers(register):
            register(WikiRetriever(name="wiki"))
    """


@hookspec
def register_vector_stores(register: Callable[[VectorStore], None], settings: Settings, platform: Platform) -> None:
    """Contribute vector stores: where collections keep their chunks' vectors (the built-in
    ``chroma``: embedded chromadb in ``ESPALIER_HOME``, or a Chroma server by URL).

    Collections use one store: the one ``ESPALIER_VECTOR_STORE`` names, else the one a plugin
    offers as default. The built-in offers itself with ``trylast``, so an installed store that
    offers itself takes its place (collections ingested into another store are not moved: ingest
    them again).

    :param register: call ``register(store)`` for each :class:`~espalier.core.infrastructure.contracts.VectorStore`;
        ``register(store, default=True)`` offers it as the one collections use while
        ``ESPALIER_VECTOR_STORE`` is unset.
    :param settings: the platform's :class:`~espalier.core.infrastructure.settings.Settings` (where the
        store lives, a server's URL); read them here, never from the environment at import time.
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing; contributions go through ``register``.
    :since: 0.1.0

    Example::

        @hookimpl
        def register_vector_stores(register, settings):
            register(PgVectorStore(name="pgvector", url=settings.database_url), default=True)
    """


@hookspec
def register_keyword_indexes(register: Callable[[KeywordIndex], None], settings: Settings, platform: Platform) -> None:
    """Contribute keyword indexes: the keyword side of collection search (``keyword`` and
    ``hybrid`` modes; the built-in ``bm25``, bm25s files under ``ESPALIER_HOME/rag/bm25``).

    Collections use one index: the one ``ESPALIER_KEYWORD_INDEX`` names, else the one a plugin
    offers as default (the built-in offers itself with ``trylast``). An index is rebuilt from the
    database when a collection's version is missing from it, so replacing one loses nothing.

    :param register: call ``register(index)`` for each :class:`~espalier.core.infrastructure.contracts.KeywordIndex`;
        ``register(index, default=True)`` offers it as the one collections use while
        ``ESPALIER_KEYWORD_INDEX`` is unset.
    :param settings: the platform's :class:`~espalier.core.infrastructure.settings.Settings` (where the
        index keeps its files); read them here, never from the environment at import time.
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing; contributions go through ``register``.
    :since: 0.1.0

    Example::

        @hookimpl
        def register_keyword_indexes(register, settings):
            register(TantivyIndex(name="tantivy", root=settings.home / "tantivy"), default=True)
    """


@hookspec
def register_document_extractors(register: Callable[[DocumentExtractor], None]) -> None:
    """Contribute document extractors: readers of the text of a file format, for ingestion.

    Core reads plain text and Markdown itself; every other format (the built-ins: ``html`` with
    selectolax, ``pdf`` with pypdf) comes from an extractor. The formats uploads and
    ``espalier ingest`` accept are core's plus the extractors' ``media_types``, found by file name
    ending (``suffixes``); a format nothing reads is refused by name. The first extractor
    registered for a media type reads it, and the built-ins register with ``trylast``.

    :param register: call ``register(extractor)`` for each
        :class:`~espalier.core.infrastructure.contracts.DocumentExtractor`: ``name``, ``media_types``
        (a tuple), optional ``suffixes`` and ``extract(data, filename)``, which returns the text or
        raises :class:`~espalier.core.infrastructure.errors.InvalidInput` saying what to do.
    :returns: nothing; contributions go through ``register``.
    :since: 0.1.0

    Example::

        import io

        import docx2txt

        class DocxExtractor:
            name = "docx"
            media_types = ("docx",)

            def extract(self, data, filename):
                return docx2txt.process(io.BytesIO(data))

        @hookimpl
        def register_document_extractors(register):
            register(DocxExtractor())
    """


@hookspec
def register_tools(register: Callable[[Tool], None], platform: Platform) -> None:
    """Contribute tools that agents and chains call, and that keys call directly as their role
    allows (``POST /api/tools/{name}/invoke``, MCP at ``/mcp``; a ``sensitive`` tool directly only
    by operators). Chat completions' ``tools`` are the consumer's own functions: Espalier runs none
    of them, and a consumer may run these tools with the same key to answer a call.

    :param register: call ``register(tool)`` for each :class:`~espalier.core.infrastructure.contracts.Tool`;
        ``tool.parameters`` must be a JSON Schema object describing the arguments.
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing.
    :since: 0.1.0

    A tool that reads data on someone's behalf calls :func:`espalier.core.tools.toolbox.caller` inside
    ``invoke``: the key that started the agent run (or the operator invoking the tool), or None
    for trusted in-process callers. The built-in ``search`` and ``lookup`` refuse collections that
    key may not read.

    A plain typed function becomes a tool with ``@espalier.tool``: the schema from its type hints,
    the description from its docstring, each argument's from the docstring's ``Args:`` section
    (the second form below).

    Example::

        @hookimpl
        def register_tools(register):
            register(Weather(name="weather", description="Current weather for a city",
                             parameters={"type": "object", "properties": {"city": {"type": "string"}},
                                         "required": ["city"]}))

        @tool(min_role="user")
        def forecast(city: str, days: Annotated[int, Field(ge=1, le=7)] = 3) -> str:
            \"\"\"The forecast for a city.

            Args:
                city: the city's name
                days: how many days ahead
            \"\"\"
            return lookup(city, days)

        @hookimpl
        def register_tools(register):  # in another plugin module
            register(forecast)
    """


@hookspec
def register_agents(register: Callable[[Agent], None], platform: Platform) -> None:
    """Contribute agents (ReAct, PAL, your own loop).

    :param register: call ``register(agent)`` for each :class:`~espalier.core.infrastructure.contracts.Agent`;
        ``register(agent, default=True)`` offers it as the one chains with tools run while
        ``ESPALIER_CHAIN_AGENT`` is unset.
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing.
    :since: 0.1.0

    Example::

        @hookimpl
        def register_agents(register):
            register(MyPlanner(name="planner", description="Plans, then acts"))
    """


@hookspec
def register_chains(register: Callable[[ChainSpec], None], platform: Platform) -> None:
    """Ship named chains: a prompt template, a memory (``none``, ``buffer`` or ``summary``) and
    optionally tools, run turn by turn through ``POST /api/chains/{name}/runs``.

    Operators can define more in the settings file (``[[chains]]``); a name used twice is a
    start-up error naming both sources.

    :param register: call ``register(ChainSpec(name, template=..., memory=..., tools=[...]))``
        for each :class:`~espalier.core.infrastructure.contracts.ChainSpec`.
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing.
    :since: 0.1.0

    Example::

        @hookimpl
        def register_chains(register):
            register(ChainSpec(name="tutor", template="cot-math", memory="summary"))
    """


@hookspec
def register_guardrails(register: Callable[[Guardrail], None], settings: Settings, platform: Platform) -> None:
    """Contribute guardrail scorers that rate text on the way in or out.

    Policies (``ESPALIER_GUARDRAIL_POLICIES``) choose which scorer checks which direction and what
    happens above a threshold; a scorer only scores.

    :param register: call ``register(guardrail)`` for each :class:`~espalier.core.infrastructure.contracts.Guardrail`;
        ``score`` returns one :class:`~espalier.core.infrastructure.contracts.GuardrailScore` per text.
    :param settings: the platform's :class:`~espalier.core.infrastructure.settings.Settings` (e.g. a configured
        checkpoint); read them here, never from the environment at import time..
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing.
    :since: 0.1.0

    Example::

        @hookimpl
        def register_guardrails(register, settings):
            register(PIIScorer(name="pii", categories=["email", "phone"]))
    """


@hookspec
def register_trainers(register: Callable[[Trainer], None], settings: Settings, platform: Platform) -> None:
    """Contribute trainers (reward models, policies, guardrail classifiers). Each becomes a job kind
    named ``train:<name>``.

    :param register: call ``register(trainer)`` for each :class:`~espalier.core.infrastructure.contracts.Trainer`.
    :param settings: the platform's :class:`~espalier.core.infrastructure.settings.Settings` (where to record
        what was trained, for instance)..
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing.
    :since: 0.1.0

    Example::

        @hookimpl
        def register_trainers(register):
            register(MyRewardTrainer(name="my-reward", description="Bradley-Terry on my encoder"))
    """


@hookspec
def register_reward_scorers(register: Callable[[RewardScorerLoader], None]) -> None:
    """Contribute reward scorer loaders: what turns a stored reward model artifact into scores.

    The reward model service loads every reward model version with the loader
    ``ESPALIER_REWARD_SCORER`` names, else the one a plugin offers with ``default=True`` (the
    built-in ``reward_models`` plugin offers ``builtin``, which reads both formats its trainer
    writes, told apart by ``reward_card.json``: a transformers model with one output, or linear
    heads on a chat model's frozen features). Best-of-n, policy updates and evaluations score
    through it.

    :param register: call ``register(loader)`` for each
        :class:`~espalier.core.infrastructure.contracts.RewardScorerLoader`; ``load(path)`` returns
        an object whose ``score(prompts, completions)`` gives one float per pair.
    :returns: nothing; contributions go through ``register``.
    :since: 0.1.0

    Example::

        @hookimpl
        def register_reward_scorers(register):
            register(OnnxRewardLoader(name="onnx"), default=True)
    """


@hookspec
def register_plotters(register: Callable[[Plotter], None]) -> None:
    """Contribute plotters: the figures of evaluations (the built-in draws them with matplotlib).

    An evaluation asks for a plotter of its kind (``toxicity``, ``policy``): the first registered
    whose ``kinds`` name it draws, and the built-in registers with ``trylast``. Its files become the
    evaluation's artifacts. With no plotter for a kind the evaluation still runs and stores no
    plot; its results say so (``results["plot"]``).

    :param register: call ``register(plotter)`` for each :class:`~espalier.core.infrastructure.contracts.Plotter`;
        ``plot(kind, data, threshold=..., out_dir=...)`` receives the evaluation's results and
        returns the files it wrote by format (``{"png": path}``).
    :returns: nothing; contributions go through ``register``.
    :since: 0.1.0

    Example::

        @hookimpl
        def register_plotters(register):
            register(VegaPlotter(name="vega", kinds=("toxicity", "policy")))
    """


@hookspec
def register_job_kinds(register: Callable[[JobKind], None], platform: Platform) -> None:
    """Contribute kinds of background job (ingestion, evaluation, maintenance...).

    :param register: call ``register(JobKind(name, run, description))``; ``run(job)`` receives a
        :class:`~espalier.core.infrastructure.contracts.JobContext` and returns a JSON-serialisable result.
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing.
    :since: 0.1.0

    Example::

        @hookimpl
        def register_job_kinds(register):
            register(JobKind("reindex", run=reindex_everything, description="Rebuild keyword indexes"))
    """


@hookspec
def register_routes(register: Callable[[Any], None], platform: Platform) -> None:
    """Contribute HTTP routes: litestar route handlers, controllers or routers.

    Every handler must declare who may call it in its ``opt``: ``roles`` (a set of ``admin``,
    ``operator``, ``user``) or ``public=True``. The app refuses to start with a handler that
    declares neither.

    :param register: call ``register(handler_or_controller_or_router)``.
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing.
    :since: 0.1.0

    Example::

        from litestar import get
        from litestar.params import FromQuery

        from espalier import access

        @get("/api/hello", opt=access("user"))  # users, operators and admins
        async def hello(name: FromQuery[str] = "world") -> dict:
            return {"hello": name}

        @hookimpl
        def register_routes(register):
            register(hello)
    """


@hookspec
def register_commands(register: Callable[[Command], None], platform: Platform) -> None:
    """Contribute CLI commands under ``espalier`` (listed in ``espalier --help``). A command with the
    name of a built-in one (``models``, ``serve``...) is skipped with a warning naming the plugin.

    :param register: call ``register(Command(name, target, help))``; ``target`` is a Typer app
        (becomes a command group) or a function (becomes one command).
    :param platform: the running :class:`~espalier.core.platform.Platform`, for a contribution that
        needs its services (it takes it in its constructor).
    :returns: nothing.
    :since: 0.1.0

    Example::

        import typer

        def hello(name: str = "world"):
            typer.echo(f"hello {name}")

        @hookimpl
        def register_commands(register):
            register(Command("hello", hello, help="Say hello"))
    """


@hookspec
def startup(platform: Platform) -> None:
    """Called once when the platform starts (server or CLI), after every plugin registered.

    :param platform: the running :class:`~espalier.core.platform.Platform` (settings, database,
        registries, jobs).
    :returns: nothing. A raise is logged with your plugin's name and traceback, reported in
        ``/readyz`` (503, ``plugins_failed_startup``) and ``/api/plugins``, and the other plugins
        still start; with ``ESPALIER_STRICT_PLUGINS`` it stops start-up.
    :since: 0.1.0

    Example::

        @hookimpl
        def startup(platform):
            platform.state["my_cache"] = {}
    """


@hookspec
def shutdown(platform: Platform) -> None:
    """Called once when the platform stops. Release what ``startup`` acquired.

    :param platform: the :class:`~espalier.core.platform.Platform` being stopped.
    :returns: nothing.
    :since: 0.1.0

    Example::

        @hookimpl
        def shutdown(platform):
            platform.state.pop("my_cache", None)
    """


@hookspec
def on_completion(event: CompletionEvent, platform: Platform) -> None:
    """Called after a chat or text completion is stored (a streamed one when its stream ends),
    whatever the entry point (the API, the console's playground, agents and chains that call the
    chat service): for usage accounting, alerts, mirroring to a warehouse.

    Called off the request path on a server (its own thread), before the command returns in the
    CLI. An exception is logged; the completion is stored and answered all the same.

    :param event: the :class:`~espalier.core.infrastructure.contracts.CompletionEvent` (ids, model
        version, key, tokens, finish reasons, latency; the texts are in the database).
    :param platform: the running platform.
    :returns: nothing.
    :since: 0.1.0

    Example::

        @hookimpl
        def on_completion(event, platform):
            if "content_filter" in event.finish_reasons:
                alert_on_call(event.request_id)
    """


@hookspec
def on_guardrail_decision(event: GuardrailDecisionEvent, platform: Platform) -> None:
    """Called for each stored guardrail event: a policy that flagged, redacted or blocked (and,
    with ``ESPALIER_GUARDRAIL_STORE_ALLOWED``, allowed), on input, output, tool or retrieved text.
    Off the request path on a server; an exception is logged and changes no decision.

    :param event: the :class:`~espalier.core.infrastructure.contracts.GuardrailDecisionEvent`
        (policy, scorer, action, categories, scores, request and key).
    :param platform: the running platform.
    :returns: nothing.
    :since: 0.1.0

    Example::

        @hookimpl
        def on_guardrail_decision(event, platform):
            if event.action == "block":
                security_log.write(event.request_id, event.policy, dict(event.scores))
    """


@hookspec
def on_job_finished(event: JobEvent, platform: Platform) -> None:
    """Called when a background job ends (``succeeded``, ``failed`` or ``cancelled``): a reward
    training, a policy update, an evaluation, an ingestion, a plugin's own job kind. Called on the
    worker after the job's record is final; an exception is logged and changes nothing.

    :param event: the :class:`~espalier.core.infrastructure.contracts.JobEvent` (id, kind, status,
        result or error, who submitted it).
    :param platform: the running platform.
    :returns: nothing.
    :since: 0.1.0

    Example::

        @hookimpl
        def on_job_finished(event, platform):
            if event.kind.startswith("train:") and event.status == "failed":
                notify_team(f"{event.kind} {event.job_id} failed: {event.error}")
    """


@hookspec
def on_feedback(event: FeedbackEvent, platform: Platform) -> None:
    """Called after feedback is durably stored, whatever the entry point: a feedback record
    (``event.kind`` ``completion``: thumbs, score, comment, correction; or ``ranking``) from the
    API, the console's playground or labeling queue, or a file of preference pairs imported by the
    API or the CLI (``kind`` ``import``: ``feedback_id`` names the import's source, ``payload``
    holds ``added`` and ``read``).

    A server calls it off the request path; the CLI before the command returns. An exception is
    logged and never loses the feedback.

    :param event: the stored :class:`~espalier.core.infrastructure.contracts.FeedbackEvent`.
    :param platform: the running platform.
    :returns: nothing.
    :since: 0.1.0

    Example::

        @hookimpl
        def on_feedback(event, platform):
            if event.kind == "completion" and event.payload.get("thumbs") == "down":
                alert_on_call(event.completion_id)
    """
