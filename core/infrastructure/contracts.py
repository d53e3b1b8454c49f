"""The shapes plugins contribute. Hook specifications (``hookspecs.py``) pass these around.

Each contribution is a plain object with a ``name``; the host checks it when it is registered
and remembers which plugin gave it. Protocols are structural: a plugin needs no base class.
Methods are synchronous; the host runs them off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

# Chat and generation -------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatMessage:
    """One message. An assistant message may carry the ``tool_calls`` it made (OpenAI's shape:
    ``{"id", "type": "function", "function": {"name", "arguments": "<JSON>"}}``); a ``tool`` message
    answers one of them by ``tool_call_id``."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[dict[str, Any], ...] | None = None
    tool_call_id: str | None = None


@dataclass
class GenerationParams:
    """Sampling settings of one request, as the OpenAI API names them."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    n: int = 1
    stop: Sequence[str] = ()
    seed: int | None = None
    #: Function definitions (OpenAI's ``tools`` shape) for models whose chat template renders them
    #: (``native_tools = True`` on the model); other models get them in the messages instead.
    tools: Sequence[Mapping[str, Any]] = ()
    #: When set, the reply must be JSON matching this schema. Models that can constrain their
    #: decoding honour it; others may ignore it (the host validates what comes back).
    json_schema: Mapping[str, Any] | None = None
    #: When set, each generated token's log-probability is returned (``TokenLogprob``) with this
    #: many of the most likely alternatives at its position (0-20). Models that cannot may refuse.
    logprobs: int | None = None
    #: Who may reuse this prompt's computed beginning (a model's prefix cache): requests with
    #: different scopes never share one, so the time to a first token tells nobody what another
    #: key asked. The chat service sets the calling key's id; None is the scope of unattributed work.
    cache_scope: str | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A token as the model chose it: its text, its bytes (a token may hold part of a character),
    the natural log of its probability under the model's own next-token distribution (before the
    sampler's temperature, nucleus or schema mask), and the most likely alternatives at its place.
    A prompt's first token, which nothing precedes, has no log-probability (None)."""

    token: str
    logprob: float | None
    bytes: tuple[int, ...]
    top: tuple[TokenLogprob, ...] = ()


@dataclass
class Generation:
    text: str
    finish_reason: Literal["stop", "length", "cancelled", "content_filter", "tool_calls"]
    prompt_tokens: int
    completion_tokens: int
    #: Set by the host when the reply was read as function calls (``text`` is then the content).
    tool_calls: list[dict[str, Any]] | None = None
    #: Each generated token's log-probability, when ``GenerationParams.logprobs`` asked for them.
    logprobs: list[TokenLogprob] | None = None


@dataclass
class TokenDelta:
    """One streamed piece of candidate ``index``; ``finish_reason`` is set on its last piece.

    ``tokens`` is how many tokens that candidate has generated so far, when the model knows it
    (pieces may hold several tokens, or none of a token held back); else the host counts pieces.
    """

    index: int
    text: str
    finish_reason: str | None = None
    tokens: int | None = None
    tool_calls: list[dict[str, Any]] | None = None  # the candidate's function calls, on its last piece
    logprobs: list[TokenLogprob] | None = None  # the tokens behind this piece, when asked for


@dataclass(frozen=True)
class ModelSpec:
    """A registered model as an operator described it (see ``espalier models add``)."""

    name: str
    provider: str
    source: str
    dtype: str = "auto"
    context_window: int | None = None
    adapter: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class ChatModel(Protocol):
    """A loaded model. ``cancel`` is polled between tokens; when it returns True, stop."""

    context_window: int

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int: ...

    def generate(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> list[Generation]: ...

    def stream(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: Callable[[], bool] | None = None
    ) -> Iterator[TokenDelta]: ...


@runtime_checkable
class ModelProvider(Protocol):
    """Turns a :class:`ModelSpec` into a loaded :class:`ChatModel` (e.g. ``transformers``, ``remote``).

    Optional: ``validate(spec)`` refuses a registration early; ``release(spec)`` drops a provider's
    own cache of ``spec``'s weights when the model service unloads that version. A chat model may
    offer ``completion_logprobs(messages, completions)`` (per-token log-probabilities), which
    policy evaluation uses to estimate the KL between versions. ``trainable = True`` says its
    models have local weights a policy update can fine-tune (the built-in ``transformers``).
    """

    name: str

    def load(self, spec: ModelSpec, *, cache_dir: str) -> ChatModel: ...


# Embeddings and retrieval --------------------------------------------------------------------


@runtime_checkable
class Embedder(Protocol):
    name: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


@dataclass
class RetrievedChunk:
    document_id: str
    chunk_id: str
    text: str
    score: float
    source: str = ""
    span: tuple[int, int] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Retriever(Protocol):
    """Finds passages for a query in ``collection``. Optional attributes, for a retriever whose
    ``collection`` is not one of Espalier's collections (the built-in ``sql`` retriever):
    ``searches_collections = False``; ``sources()``, the names ``collection`` may take (grounded
    answers search them all when a request names none); ``authorize(principal)``, raising
    :class:`~espalier.core.infrastructure.errors.Forbidden` for keys that may not read it. Collection retrievers
    need none of these: access to a collection is checked before they are called."""

    name: str

    def search(
        self, query: str, *, collection: str, k: int = 5, filters: Mapping[str, Any] | None = None
    ) -> list[RetrievedChunk]: ...


# Collections' storage: vectors, keywords, document text ---------------------------------------


@runtime_checkable
class VectorStore(Protocol):
    """Where collections keep their chunks' vectors (the built-in ``chroma``). ``collection`` is
    the store's name for one Espalier collection; a store creates it on first use.

    ``vectors`` are computed by Espalier's embedder (a float32 array, one row per id). ``where``
    is None or a filter on the metadata in chromadb's form: ``{key: {"$eq": value}}``, or
    ``{"$and": [...]}`` of such clauses. ``query`` returns up to ``k`` ``(id, cosine distance)``
    pairs, nearest first. Every method raises
    :class:`~espalier.core.infrastructure.errors.Unavailable` when the store cannot be reached;
    ``add`` then leaves nothing half written, and ``delete(..., quiet=True)`` logs instead of
    raising (vectors whose ids are not in the database are ignored by search). ``drop`` of a
    collection that does not exist does nothing.
    """

    name: str

    def add(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: Any,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
    ) -> None: ...

    def delete(self, collection: str, ids: Sequence[str], *, quiet: bool = False) -> None: ...

    def update_metadata(self, collection: str, ids: Sequence[str], metadatas: Sequence[Mapping[str, Any]]) -> None: ...

    def query(
        self, collection: str, vector: Sequence[float], k: int, where: Mapping[str, Any] | None
    ) -> list[tuple[str, float]]: ...

    def drop(self, collection: str) -> None: ...


@runtime_checkable
class KeywordIndex(Protocol):
    """The keyword index of collections (the built-in ``bm25``). ``build`` indexes a collection's
    chunks as ``version`` (it is rebuilt at ingestion, never per query) and may forget older
    versions; ``search`` returns up to ``k`` ``(id, score)`` pairs, best first, with positive
    scores only, and raises ``LookupError`` when ``version`` was never built (``has`` says so)."""

    name: str

    def build(self, collection_id: str, version: int, ids: Sequence[str], texts: Sequence[str]) -> None: ...

    def has(self, collection_id: str, version: int) -> bool: ...

    def search(self, collection_id: str, version: int, query: str, k: int) -> list[tuple[str, float]]: ...

    def drop(self, collection_id: str) -> None: ...


@runtime_checkable
class DocumentExtractor(Protocol):
    """Reads the text of documents of its ``media_types`` (short names such as ``html``, ``pdf``:
    what ``format`` says in an upload and what a document's record keeps). Core reads ``text`` and
    ``markdown`` itself. Optional ``suffixes``: the file name endings that mean each type
    (``{".htm": "html"}``); without it, ``.<type>`` for each of its types. ``extract`` raises
    :class:`~espalier.core.infrastructure.errors.InvalidInput` for a file it cannot read, saying what
    to do; the host refuses text that is empty."""

    name: str
    media_types: tuple[str, ...]

    def extract(self, data: bytes, filename: str) -> str: ...


# Tools and agents ----------------------------------------------------------------------------


@dataclass
class ToolResult:
    output: str
    data: Any = None
    is_error: bool = False


@runtime_checkable
class Tool(Protocol):
    """Something a model or an operator can call. ``parameters`` is a JSON Schema object.

    Optional attribute ``sensitive = True`` (tools that run code or read data): once a run has read
    untrusted text (the output of any tool without ``trusted_output = True``: search results,
    documents, web pages, query rows), agents refuse sensitive tools for the rest of that run, so
    retrieved text cannot steer them however it is worded (the operator can allow named tools with
    ``ESPALIER_AGENT_SENSITIVE_AFTER_UNTRUSTED``).

    Optional attribute ``trusted_output = True``: the tool's output is computed from its arguments
    alone (a calculator), so reading it leaves a run's sensitive tools on.

    Optional attribute ``min_role`` (``"user"`` when absent): the least role of a key on whose
    behalf the tool may run, checked on every path that runs a tool (direct invoke, agent runs,
    chains); an operator overrides it per tool with ``ESPALIER_TOOL_ROLES``.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]

    def invoke(self, arguments: Mapping[str, Any]) -> ToolResult: ...


@runtime_checkable
class Agent(Protocol):
    name: str
    description: str

    def run(self, question: str, *, context: Any) -> Any: ...


# Guardrails ----------------------------------------------------------------------------------

Direction = Literal["input", "output", "retrieved", "tool"]


@dataclass
class GuardrailScore:
    """Scores in [0, 1] per category, from one scorer."""

    scorer: str
    scores: Mapping[str, float]
    version: str = ""


@runtime_checkable
class Guardrail(Protocol):
    """A scorer: ``score`` returns one :class:`GuardrailScore` per text. Policies (settings) decide
    what a score means. A scorer may offer ``default_policies``: policy tables without ``scorer``
    (it is the one offering them), in force while an operator sets no ``guardrail_policies``."""

    name: str
    categories: Sequence[str]

    def score(self, texts: Sequence[str], *, direction: Direction) -> list[GuardrailScore]: ...


# Training ------------------------------------------------------------------------------------


@runtime_checkable
class JobContext(Protocol):
    """What a running job sees: report progress, write logs, notice cancellation, save artifacts."""

    job_id: str
    params: Mapping[str, Any]
    artifact_dir: str

    def progress(self, fraction: float, message: str = "") -> None: ...

    def log(self, message: str) -> None: ...

    def metrics(self, step: int, **values: float) -> None:
        """Record one step's numbers (``loss=0.3, reward=1.2``); the console plots them as curves."""
        ...

    def cancelled(self) -> bool: ...


@runtime_checkable
class Trainer(Protocol):
    """A kind of training run (reward model, policy, guardrail classifier...)."""

    name: str
    description: str

    def train(self, job: JobContext) -> Mapping[str, Any]: ...

    # Optional: ``finished(job)``, called with the stored job row after each run of this trainer
    # ends, whatever its outcome (see :class:`JobKind`).


@dataclass(frozen=True)
class JobKind:
    """A kind of background job: ``run`` receives the job's context and returns a JSON result.

    ``finished``, when given, is called with the job's stored row once its end (succeeded,
    failed or cancelled) is recorded, on the worker: what should follow a run, such as the next
    retrain when feedback arrived during this one. Its errors are logged; the job's outcome stands.
    """

    name: str
    run: Callable[[JobContext], Any]
    description: str = ""
    finished: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class Command:
    """A CLI command contributed by a plugin: a Typer app (a group) or a plain function."""

    name: str
    target: Any
    help: str = ""


@dataclass(frozen=True)
class Screened:
    """One text after the guardrail policies for its direction: ``action`` is the strongest that
    matched (``allow``, ``flag``, ``redact`` or ``block``), ``text`` what may be shown (redacted
    where a policy redacts), ``scores`` each scorer's categories."""

    action: str
    text: str
    scores: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def blocked(self) -> bool:
        return self.action == "block"


class TextScreen(Protocol):
    """The guardrail policies as the layers below the interface use them: retrieved passages
    (direction ``retrieved``) and tool output in agent runs (``tool``) are screened through the
    same policies an operator configures for chat input and output."""

    def screen(
        self,
        texts: Sequence[str],
        *,
        direction: Direction,
        route: str,
        principal: Any = None,
        request_id: str | None = None,
    ) -> list[Screened]: ...


# Evaluation plots -----------------------------------------------------------------------------


@runtime_checkable
class Plotter(Protocol):
    """Draws the figures of evaluations of its ``kinds`` (``toxicity``: several models on one prompt
    set; ``policy``: a candidate version against the serving one). ``plot`` receives the
    evaluation's results (``data``) and the toxicity threshold, writes files into ``out_dir`` (which
    it creates) and returns them by format (``{"png": path}``); the record keeps them as its
    artifacts. With no plotter for a kind, evaluations still run and store no plot."""

    name: str
    kinds: Sequence[str]

    def plot(self, kind: str, data: Mapping[str, Any], *, threshold: float, out_dir: Path) -> dict[str, Path]: ...


class RewardScorer(Protocol):
    """A loaded reward model. Scores are unnormalised: compare them, do not threshold them."""

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]: ...


@runtime_checkable
class RewardScorerLoader(Protocol):
    """Loads a reward model artifact (the folder a reward trainer wrote) as a :class:`RewardScorer`."""

    name: str

    def load(self, path: Path) -> RewardScorer: ...


# Feedback events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackEvent:
    """Sent to ``on_feedback`` after feedback is durably stored, whatever the entry point (the API,
    the console's playground and labeling queue, the CLI). ``kind`` is ``completion`` or
    ``ranking`` for a feedback record (``feedback_id`` is its id), or ``import`` for a file of
    preference pairs (``feedback_id`` names the import's source, ``payload`` holds ``added``)."""

    feedback_id: str
    kind: str
    completion_id: str | None
    payload: Mapping[str, Any]
    api_key_id: str | None


@dataclass(frozen=True)
class CompletionEvent:
    """Sent to ``on_completion`` after a chat or text completion is stored (streamed ones when the
    stream ends): who asked, which model version answered, what it cost, how each candidate ended.
    The texts are in the database under ``completion_ids`` (the conversations API reads them)."""

    request_id: str
    kind: str  # chat or completion
    conversation_id: str
    model: str
    model_version: str
    api_key_id: str | None
    completion_ids: tuple[str, ...]
    finish_reasons: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    status: str


@dataclass(frozen=True)
class GuardrailDecisionEvent:
    """Sent to ``on_guardrail_decision`` for each stored guardrail event (a policy that flagged,
    redacted or blocked, or allowed when ``ESPALIER_GUARDRAIL_STORE_ALLOWED`` keeps those)."""

    event_id: str
    request_id: str | None
    api_key_id: str | None
    direction: str
    route: str
    policy: str
    scorer: str
    action: str
    categories: tuple[str, ...]
    scores: Mapping[str, float]


@dataclass(frozen=True)
class JobEvent:
    """Sent to ``on_job_finished`` when a background job ends: ``status`` is ``succeeded``,
    ``failed`` (``error`` says why) or ``cancelled``; ``result`` is the job's result when it succeeded."""

    job_id: str
    kind: str
    status: str
    created_by: str | None
    result: Mapping[str, Any] | None
    error: str | None


# Chat requests: what the chat service takes and gives ---------------------------------------


@dataclass(frozen=True)
class ResponseFormat:
    """Structured output (OpenAI's ``response_format``): the reply is one JSON document matching
    ``schema``, decoded under it by a model that can constrain its decoding
    (``constrained_decoding = True``); ``json_object`` is the schema ``{"type": "object"}``."""

    kind: Literal["json_object", "json_schema"]
    schema: Mapping[str, Any]
    name: str = "response"
    strict: bool = True


@dataclass
class ChatRequest:
    model: str
    messages: list[ChatMessage] = field(default_factory=list)
    prompt: str | None = None  # plain completions: no chat template
    params: GenerationParams = field(default_factory=GenerationParams)
    kind: Literal["chat", "completion"] = "chat"
    conversation_id: str | None = None
    template: str | None = None
    variables: Mapping[str, Any] | None = None
    version: str | None = None
    collections: list[str] | None = None  # grounded answers: search these, quote what is found
    tools: ToolSetup | None = None  # OpenAI-style function calling (core/tool_calls.py)
    retriever: str | None = None  # grounded answers: the retriever that searches them (default hybrid)
    response_format: ResponseFormat | None = None  # structured output: the reply is JSON under a schema


@dataclass
class ChatResult:
    request_id: str
    conversation_id: str
    created: int
    model: str
    model_version: str
    generations: list[Generation]
    completion_ids: list[str]
    prompt_tokens: int
    completion_tokens: int
    template: str | None = None
    sources: list[dict[str, Any]] | None = None

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class ChatCompleter(Protocol):
    """What chains and labeling jobs need of the chat service: one completion, under a caller's rights.

    ``principal`` is the :class:`~espalier.core.infrastructure.identity.Principal` the answer is made
    for (None for trusted in-process callers); ``cancel`` is polled between tokens.
    """

    def complete(
        self, request: ChatRequest, principal: Any, cancel: Callable[[], bool] | None = None
    ) -> ChatResult: ...


# Function calling: OpenAI-style tools in a chat request ---------------------------------------


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str
    parameters: Mapping[str, Any]
    strict: bool = False

    def definition(self) -> dict[str, Any]:
        """The OpenAI shape, as chat templates with tools support expect it."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)},
        }


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # none | auto | required | named
    name: str | None = None


@dataclass
class ToolSetup:
    """The tools of one chat request, checked."""

    tools: list[FunctionTool]
    choice: ToolChoice
    by_name: dict[str, FunctionTool] = field(init=False)

    def __post_init__(self) -> None:
        self.by_name = {tool.name: tool for tool in self.tools}

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.choice.mode != "none"


# Chains and prompt templates, as plugins and settings contribute them ----------------------------


@dataclass(frozen=True)
class ChainSpec:
    """A named chain. ``template`` names a prompt template; else ``system`` is the system prompt."""

    name: str
    description: str = ""
    template: str | None = None
    system: str | None = None
    memory: Literal["none", "buffer", "summary"] = "buffer"
    window: int = 6
    tools: Sequence[str] = field(default_factory=tuple)
    model: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0


@dataclass(frozen=True)
class TemplateSpec:
    """A template as a plugin ships it (``register_prompt_templates``) or an operator writes it."""

    name: str
    user: str = "{{ input }}"
    system: str | None = None
    examples: Sequence[Mapping[str, str]] = field(default_factory=tuple)
    description: str = ""
