"""One typed settings object: ``ESPALIER_*`` environment variables over an optional TOML file.

Created by the app factory and the CLI, never read at import time, so tests and several apps in
one process can hold different settings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

Role = Literal["admin", "operator", "user"]


def _default_home() -> Path:
    return Path.home() / ".espalier"


class Settings(BaseSettings):
    """Everything an operator can set. Each field is ``ESPALIER_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="ESPALIER_", extra="forbid", validate_default=True)

    home: Path = Field(
        default_factory=_default_home, description="Data folder: SQLite file, chromadb, model caches, artifacts."
    )
    config_file: Path | None = Field(default=None, description="Optional TOML file read under the environment.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite in ESPALIER_HOME when unset.")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="SQLite: FULL syncs every commit (acknowledged writes survive power loss); NORMAL is "
        "faster and survives a process kill but not a power cut.",
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    plugins: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Allow-list of distributions whose entry-point plugins load; unset loads all, empty loads none.",
    )
    disable_plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Plugin names to block, built-ins included."
    )
    strict_plugins: bool = Field(default=False, description="Fail start-up when a plugin fails to load.")

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    rate_limit_per_minute: int = Field(
        default=600, ge=1, description="Requests per key (or client address) per minute."
    )
    redis_url: str | None = Field(default=None, description="Shared store for rate limits between workers.")
    rate_limit_when_store_down: Literal["local", "refuse"] = Field(
        default="local",
        description="While Redis is away: 'local' counts per process (and /readyz says not ready); "
        "'refuse' answers 503 with Retry-After.",
    )
    tool_roles: dict[str, Role] = Field(
        default_factory=dict,
        description="Least role that may run each tool, over the tool's own (JSON), "
        'e.g. {"sql": "user", "sandbox": "operator"}.',
    )
    auth_failures_per_minute: int = Field(
        default=30,
        ge=1,
        description="Requests failing authentication allowed per client address per minute; past it the "
        "address gets 429 before any key is checked (never counted against the key a request names).",
    )

    model_cache_dir: Path | None = Field(
        default=None, description="Where converted model weights are cached; ESPALIER_HOME/models when unset."
    )
    default_model: str = Field(default="smollm2-135m-instruct", description="The model used when a feature needs one.")
    prefix_cache_mb: int = Field(
        default=128,
        ge=0,
        description="Memory (per loaded model version) for the keys and values of recent prompts, "
        "so a key's prompts that begin alike "
        "(system prompt, few-shot examples, earlier turns) are prefilled from there; 0 turns it off.",
    )
    pack_prefill_weights: bool = Field(
        default=True,
        description="Local bfloat16 models run prompt passes on weights pre-packed for oneDNN (same results, "
        "faster first token; the linear layers' weights are held twice).",
    )

    chroma_url: str | None = Field(
        default=None,
        description="A Chroma server (http://host:port) for collections; "
        "the embedded store in ESPALIER_HOME/chroma when unset.",
    )
    max_upload_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1, description="Largest document accepted for ingestion."
    )
    max_queued_jobs_per_kind: int = Field(
        default=8, ge=1, description="Jobs of one kind that may wait at once; the next gets 429 job_queue_full."
    )
    max_queued_jobs_per_key: int = Field(
        default=4, ge=1, description="Jobs one key may have waiting at once; the next gets 429 job_queue_full."
    )
    feedback_rate_limit_per_minute: int = Field(
        default=60, ge=1, description="Feedback submissions per key per minute (on top of the request limit)."
    )
    reward_retrain_after_pairs: int = Field(
        default=50, ge=0, description="Retrain the reward model when this many new preference pairs arrived; 0: never."
    )
    reward_retrain_params: dict[str, Any] = Field(
        default_factory=dict, description='Settings for automatic reward retrains (JSON), e.g. {"epochs": 2}.'
    )
    # Policy evaluation, promotion and constitutional AI (see docs/operators.md) ----------------
    max_loaded_versions: int = Field(
        default=3,
        ge=1,
        le=32,
        description="Most versions of one model kept in memory; the least recently used non-serving ones are unloaded.",
    )
    gate_reward_tolerance: float = Field(
        default=0.0,
        ge=0,
        description="Fail when the mean reward is surely (95% paired interval) below the serving one's minus this.",
    )
    gate_toxicity_tolerance: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Fail when the mean toxicity is surely (95% paired interval) above the serving one's plus this.",
    )
    gate_max_kl: float = Field(
        default=10.0,
        gt=0,
        description="Largest mean KL (nats per completion) from the reference the gate accepts.",
    )
    gate_task_tolerance: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Fail when the task accuracy is surely (95% paired interval) below the serving one's minus this.",
    )
    gate_min_prompts: int = Field(
        default=20,
        ge=1,
        le=2000,
        description="Fewest validation prompts the gate judges on; with fewer a candidate fails (noise, not signal).",
    )
    gate_require_improvement: bool = Field(
        default=True,
        description="A candidate passes only when its reward rises or its toxicity falls by more than noise.",
    )
    constitution_path: Path | None = Field(
        default=None,
        description="A TOML constitution for 'cai:labels'; the shipped default when unset.",
    )
    exclude_below_consensus: bool = Field(
        default=True,
        description="Leave the feedback of labelers far below consensus (the agreement report) out of training.",
    )
    ai_pair_weight: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Weight of an AI preference pair in the reward model's loss (a human pair weighs 1); "
        "0 leaves them out.",
    )
    console_session_minutes: int = Field(
        default=60, ge=1, le=24 * 60, description="How long a console sign-in lasts before signing in again."
    )
    sql_tool_url: str | None = Field(
        default=None,
        description="Database the read-only `sql` tool queries (SQLite file or PostgreSQL URL); unset: off.",
    )
    sql_tool_max_rows: int = Field(default=200, ge=1, le=10_000, description="Most rows one `sql` call returns.")
    sql_tool_timeout_ms: int = Field(
        default=5000,
        ge=100,
        description="Time limit of one `sql` query (PostgreSQL statement timeout; SQLite progress handler).",
    )
    default_retriever: str = Field(
        default="hybrid", description="The retriever the agents' search and lookup tools use unless told otherwise."
    )
    # SQL retriever (see docs/operators.md, "SQL retriever") ---------------------------------
    sql_retriever_url: str | None = Field(
        default=None,
        description="Database the read-only `sql` retriever answers from (SQLite file or PostgreSQL URL); unset: off.",
    )
    sql_retriever_table: str | None = Field(default=None, description="Its table or view (`schema.name` allowed).")
    sql_retriever_text_columns: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Columns searched and quoted as the passage (comma-separated)."
    )
    sql_retriever_id_column: str | None = Field(
        default=None, description="Column that identifies a row; the primary key when unset."
    )
    sql_retriever_filter_columns: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Columns a search may filter on by equality (comma-separated)."
    )
    sql_retriever_max_rows: int = Field(default=20, ge=1, le=200, description="Most rows one search returns.")
    sql_retriever_scan_rows: int = Field(
        default=1000, ge=1, le=100_000, description="Most matching rows read and ranked per search."
    )
    sql_retriever_timeout_ms: int = Field(default=5000, ge=100, description="Time limit of one search query.")
    sql_retriever_role: Role = Field(default="user", description="Least role whose keys may search it.")
    # Web pages as documents (see docs/operators.md, "Web sources") ---------------------------
    web_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts, IP addresses or networks (CIDR) that URL ingestion may reach even when private or "
        "loopback (comma-separated); public addresses are always allowed unless web_public is off.",
    )
    web_public: bool = Field(default=True, description="Allow URL ingestion from public internet addresses.")
    web_max_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, description="Largest web page fetched.")
    web_timeout_s: float = Field(
        default=15.0, gt=0, le=300, description="Time limit of fetching one page, redirects included."
    )
    web_max_redirects: int = Field(
        default=5, ge=0, le=20, description="Most redirects followed per URL (each is checked again)."
    )
    agent_max_steps: int = Field(default=8, ge=1, le=50, description="Most steps an agent run may take.")
    agent_sensitive_after_untrusted: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Sensitive tools an agent may still call after its run read untrusted text (JSON list); "
        "by default none: retrieved text must not steer code or data access.",
    )
    agent_timeout_s: float = Field(default=120.0, gt=0, le=3600, description="Wall-clock limit of one agent run.")
    # Guardrails (see docs/operators.md, "Guardrails") ----------------------------------------
    toxicity_checkpoint: Path | None = Field(
        default=None,
        description="A detoxify-format .ckpt served as the 'detoxify' scorer; unset uses the last one "
        "trained with 'espalier guardrails train', if any.",
    )
    toxicity_config_dir: Path | None = Field(
        default=None, description="Its offline config folder; hf_config/ beside it when unset."
    )
    judge_checkpoint: Path | None = Field(
        default=None,
        description="A second detoxify-format .ckpt, trained apart from the guardrail's, served as the 'judge' "
        "scorer: it judges evaluations and guards nothing, so a policy update that optimised the 'detoxify' "
        "scorer can still be judged independently; unset uses the last one trained with "
        "'espalier guardrails train --judge', if any.",
    )
    judge_config_dir: Path | None = Field(
        default=None, description="Its offline config folder; hf_config/ beside it when unset."
    )
    injection_checkpoint: Path | None = Field(
        default=None,
        description="An injection classifier checkpoint combined with the 'injection' rules; unset: last trained.",
    )
    injection_config_dir: Path | None = Field(default=None, description="Its offline config folder.")
    injection_canaries: Annotated[list[str], NoDecode] = Field(  # "a,b" in the environment, not JSON
        default_factory=list,
        description="Secret strings planted in system prompts; text containing one scores injection 1.0.",
    )
    guardrail_policies: list[dict[str, Any]] | None = Field(
        default=None,
        description="Guardrail policies (a list of tables in TOML, JSON in the environment); unset: the "
        "policies the registered scorers offer (the built-ins flag toxic input and output, never block, "
        "and leave out retrieved text and agents' tool output that read as instructions).",
    )
    guardrail_store_allowed: bool = Field(
        default=False, description="Also store 'allow' decisions as guardrail events (all are counted in /metrics)."
    )

    plugin_settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="A section per plugin ([plugin_settings.<plugin>] tables in TOML, JSON in the environment), "
        "read by the plugin with settings.for_plugin(name, Model).",
    )
    mcp_servers: list[dict[str, Any]] = Field(
        default_factory=list,
        description="MCP servers whose tools become Espalier tools ([[mcp_servers]] tables, JSON in the "
        "environment): name, url (streamable HTTP) with headers, or command with args and env (stdio); "
        "min_role (default operator), timeout_seconds (default 30).",
    )

    chains: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Named chains ([[chains]] tables: name, template or system, memory, window, tools, model).",
    )

    evaluation_scorer: str | None = Field(
        default=None,
        description="The guardrail scorer candidate evaluations measure toxicity with; unset: 'judge' when one "
        "is served, else the one a plugin offers (built-in: detoxify when a checkpoint is configured or "
        "trained, else profanity).",
    )
    reward_scorer: str | None = Field(
        default=None,
        description="The plugin that loads reward models for scoring; unset: the one a plugin offers "
        "(built-in: builtin, from reward_models).",
    )
    embedder: str | None = Field(
        default=None, description="The embedder for collections; unset: the one a plugin offers (built-in: minilm)."
    )
    chain_agent: str | None = Field(
        default=None, description="The agent a chain with tools runs; unset: the one a plugin offers (built-in: react)."
    )
    vector_store: str | None = Field(
        default=None,
        description="The vector store of collections; unset: the one a plugin offers (built-in: chroma).",
    )
    keyword_index: str | None = Field(
        default=None,
        description="The keyword index of collections; unset: the one a plugin offers (built-in: bm25).",
    )

    job_workers: int = Field(default=1, ge=1, le=16)
    log_level: str = "INFO"
    log_json: bool = True

    @field_validator(
        "sql_retriever_text_columns",
        "sql_retriever_filter_columns",
        "web_allow_hosts",
        "injection_canaries",
        "plugins",
        "disable_plugins",
        "agent_sensitive_after_untrusted",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        # ``a,b`` as well as a JSON list (for an item with a comma in it, e.g. a canary);
        # ``ESPALIER_PLUGINS=`` means "none".
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("ESPALIER_CONFIG_FILE")
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise FileNotFoundError(f"ESPALIER_CONFIG_FILE points at {path}, which is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # Derived locations -------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'espalier.db'}"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    def for_plugin(self, name: str, schema: type[Any] | None = None) -> Any:
        """Plugin ``name``'s own section of the settings (``[plugin_settings.<name>]``): a dict, or an
        instance of ``schema`` (a pydantic model) validated from it, whose errors name the section::

            class HelloSettings(BaseModel):
                greeting: str = "Hello"

            greeting = platform.settings.for_plugin("hello", HelloSettings).greeting
        """
        raw = dict(self.plugin_settings.get(name) or {})
        if schema is None:
            return raw
        from pydantic import ValidationError

        from espalier.core.infrastructure.errors import InvalidInput

        try:
            return schema.model_validate(raw)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(section)'}: {e['msg']}" for e in error.errors()
            )
            raise InvalidInput(f"settings of plugin '{name}' ([plugin_settings.{name}]): {problems}") from None

    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir or self.home / "models"

    @property
    def chroma_dir(self) -> Path:
        return self.home / "chroma"

    @property
    def rag_dir(self) -> Path:
        return self.home / "rag"

    @property
    def guardrail_models_dir(self) -> Path:
        """Where trained guardrail classifiers are recorded (``<kind>.json`` names the current one)."""
        return self.artifacts_dir / "guardrails"

    def ensure_dirs(self) -> None:
        """Create the data folders, private to this user: what lives here (the database and its
        WAL, key material, artifacts, caches) is the operator's alone.

        The process umask becomes 077, so every file Espalier and the libraries it drives create
        from here on (SQLite's WAL, chromadb's files, checkpoints) is 0600 and every folder 0700;
        a home made by an earlier version is tightened in place."""
        os.umask(0o077)
        for path in (self.home, self.artifacts_dir, self.models_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        _make_private(self.home)
        database = self.home / "espalier.db"
        for path in (database, database.with_name("espalier.db-wal"), database.with_name("espalier.db-shm")):
            _make_private(path)


def _make_private(path: Path) -> None:
    """Drop group and other permissions of a file or folder this user owns (a no-op otherwise)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        path.chmod(info.st_mode & 0o700)


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and TOML file), with explicit overrides on top."""
    return Settings(**overrides)
