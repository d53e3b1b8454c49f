"""One test per hook (a meta-test keeps it that way), and the docs checked against the specs."""

import sys
import time
from pathlib import Path

import pytest
from litestar import get
from typer.testing import CliRunner

from espalier import hookimpl
from espalier.api.guards import access
from espalier.api.testing import build_harness
from espalier.core.infrastructure import contracts, hookdocs
from espalier.core.infrastructure.contracts import Command, FeedbackEvent, GuardrailScore, JobKind, ToolResult
from espalier.core.infrastructure.events import notify_feedback
from espalier.core.infrastructure.settings import Settings
from espalier.core.platform import Platform
from tests.support import REPO


def platform_with(tmp_path, plugin, **settings):
    return Platform(
        Settings(home=tmp_path / "home", **settings), extra_plugins=[("probe", plugin)], load_entry_points=False
    )


# Documentation ---------------------------------------------------------------------------------
def test_every_hook_is_fully_documented():
    assert hookdocs.missing_docs() == {}


def test_no_hook_is_newer_than_the_package():
    """A hook marked as arriving in a version after the installed one misleads a plugin author."""
    import re

    from espalier import __version__
    from espalier.core.infrastructure import hookspecs

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split("."))

    source = Path(hookspecs.__file__).read_text()
    marked = re.findall(r"(?i)since:?\s+(\d+\.\d+\.\d+)", source)
    assert marked, "hooks carry :since: markers"
    assert all(version(v) <= version(__version__) for v in marked), sorted(set(marked))


def test_plugin_reference_is_generated_from_the_specs():
    text = (REPO / "docs" / "plugins.md").read_text()
    assert hookdocs.rewrite(text) == text, (
        "run: python -m espalier.core.infrastructure.hookdocs --write docs/plugins.md"
    )


def test_every_hook_has_a_test_of_its_own():
    tests = {name for name in globals() if name.startswith("test_hook_")}
    missing = {f"test_hook_{name}" for name in hookdocs.hook_functions()} - tests
    assert not missing, f"hooks without a test: {sorted(missing)}"


def test_hookimpl_is_importable_from_the_package_root():
    import espalier

    assert espalier.hookimpl.project_name == "espalier"


# One test per hook -----------------------------------------------------------------------------
class Model:
    context_window = 64

    def count_tokens(self, messages):
        return sum(len(m.content.split()) for m in messages)

    def generate(self, messages, params, cancel=None):
        return [contracts.Generation("echo: " + messages[-1].content, "stop", 1, 2)]

    def stream(self, messages, params, cancel=None):
        yield contracts.TokenDelta(0, "echo", "stop")


class Provider:
    name = "echo"

    def load(self, spec, *, cache_dir):
        return Model()


def test_hook_register_model_providers(tmp_path):
    class Plugin:
        @hookimpl
        def register_model_providers(self, register):
            register(Provider())

    platform = platform_with(tmp_path, Plugin())
    provider = platform.model_providers.get("echo")
    model = provider.load(contracts.ModelSpec("m", "echo", "x"), cache_dir=str(tmp_path))
    assert isinstance(model, contracts.ChatModel)
    assert model.generate([contracts.ChatMessage("user", "hi")], contracts.GenerationParams())[0].text == "echo: hi"
    assert platform.model_providers.entry("echo").plugin == "probe"


def test_hook_register_embedders(tmp_path):
    class Embedder:
        name = "lengths"
        dimensions = 1

        def embed(self, texts):
            return [[float(len(text))] for text in texts]

    class Plugin:
        @hookimpl
        def register_embedders(self, register):
            register(Embedder())

    assert platform_with(tmp_path, Plugin()).embedders.get("lengths").embed(["abc"]) == [[3.0]]


def test_hook_register_retrievers(tmp_path):
    class Retriever:
        name = "static"

        def search(self, query, *, collection, k=5, filters=None):
            return [contracts.RetrievedChunk("d1", "c1", f"about {query}", 1.0)][:k]

    class Plugin:
        @hookimpl
        def register_retrievers(self, register):
            register(Retriever())

    [chunk] = platform_with(tmp_path, Plugin()).retrievers.get("static").search("trees", collection="c")
    assert chunk.text == "about trees"


def test_hook_register_tools(tmp_path):
    class Shout:
        name = "shout"
        description = "upper-case"
        parameters = {"type": "object", "properties": {"text": {"type": "string"}}}

        def invoke(self, arguments):
            return ToolResult(arguments["text"].upper())

    class Plugin:
        @hookimpl
        def register_tools(self, register):
            register(Shout())

    tools = platform_with(tmp_path, Plugin()).tools
    assert tools.get("shout").invoke({"text": "hi"}).output == "HI"
    assert tools.get("calculator").invoke({"expression": "6*7"}).data == 42  # built-ins alongside


def test_hook_register_agents(tmp_path):
    class Agent:
        name = "parrot"
        description = "repeats"

        def run(self, question, *, context):
            return question

    class Plugin:
        @hookimpl
        def register_agents(self, register):
            register(Agent())

    assert platform_with(tmp_path, Plugin()).agents.get("parrot").run("q", context=None) == "q"


def test_hook_register_guardrails(tmp_path):
    class Shouting:
        name = "shouting"
        categories = ["caps"]

        def score(self, texts, *, direction):
            return [GuardrailScore(self.name, {"caps": float(text.isupper())}) for text in texts]

    class Plugin:
        @hookimpl
        def register_guardrails(self, register, settings):
            seen.append(settings)
            register(Shouting())

    seen = []
    platform = platform_with(tmp_path, Plugin())
    scores = platform.guardrails.get("shouting").score(["HEY", "hey"], direction="input")
    assert [s.scores["caps"] for s in scores] == [1.0, 0.0]
    assert seen == [platform.settings]


def wait_for(platform, job_id):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        job = platform.jobs.get(job_id)
        if job.status not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_hook_register_trainers(tmp_path):
    class Trainer:
        name = "mean"
        description = "learns the mean"

        def train(self, job):
            values = job.params["values"]
            job.progress(0.5, "halfway")
            return {"mean": sum(values) / len(values)}

    class Plugin:
        @hookimpl
        def register_trainers(self, register, settings):
            assert settings.artifacts_dir.name == "artifacts"
            register(Trainer())

    platform = platform_with(tmp_path, Plugin()).start()
    try:
        job = platform.jobs.submit("train:mean", {"values": [1, 2, 3]})
        assert wait_for(platform, job.id).result == {"mean": 2.0}
    finally:
        platform.close()


def test_hook_register_job_kinds(tmp_path):
    class Plugin:
        @hookimpl
        def register_job_kinds(self, register):
            register(JobKind("double", run=lambda job: job.params["x"] * 2))

    platform = platform_with(tmp_path, Plugin()).start()
    try:
        assert wait_for(platform, platform.jobs.submit("double", {"x": 21}).id).result == 42
    finally:
        platform.close()


def test_hook_register_routes(tmp_path):
    @get("/api/probe", opt=access("operator"))
    async def probe() -> dict:
        return {"probe": True}

    class Plugin:
        @hookimpl
        def register_routes(self, register):
            register(probe)

    for harness in build_harness(tmp_path / "h", [Plugin()]):
        assert harness.client.get("/api/probe", headers=harness.headers("operator")).json() == {"probe": True}
        assert harness.client.get("/api/probe", headers=harness.headers("user")).status_code == 403


def test_hook_register_commands(tmp_path, monkeypatch):
    import espalier.api.cli as cli

    def greet(name: str = "world") -> None:
        print(f"hello {name}")

    class Plugin:
        @hookimpl
        def register_commands(self, register):
            register(Command("greet", greet, help="Say hello"))

    original = cli.platform
    monkeypatch.setattr(cli, "platform", lambda migrate=True: platform_with(tmp_path, Plugin()))
    monkeypatch.setattr(sys, "argv", ["espalier", "greet"])
    cli._add_plugin_commands()
    monkeypatch.setattr(cli, "platform", original)
    result = CliRunner().invoke(cli.app, ["greet", "--name", "Ada"])
    assert result.exit_code == 0, result.output
    assert "hello Ada" in result.output


def test_hook_startup(tmp_path):
    class Plugin:
        @hookimpl
        def startup(self, platform):
            platform.state["warmed"] = platform.database_ok()

    platform = platform_with(tmp_path, Plugin()).start(run_jobs=False)
    try:
        assert platform.state["warmed"] is True
    finally:
        platform.close()


def test_hook_shutdown(tmp_path):
    closed = []

    class Plugin:
        @hookimpl
        def shutdown(self, platform):
            closed.append(platform.settings.home)

    platform = platform_with(tmp_path, Plugin()).start(run_jobs=False)
    platform.close()
    assert closed == [tmp_path / "home"]


def test_hook_on_feedback(tmp_path):
    received = []

    class Listener:
        @hookimpl
        def on_feedback(self, event, platform):
            received.append((event.feedback_id, event.payload["value"]))

    class Broken:
        @hookimpl
        def on_feedback(self, event):
            raise RuntimeError("listener bug")

    platform = Platform(
        Settings(home=tmp_path / "home"),
        extra_plugins=[("listener", Listener()), ("broken", Broken())],
        load_entry_points=False,
    )
    event = FeedbackEvent("fb_1", "thumbs", "cmp_1", {"value": "up"}, "key1")
    errors = notify_feedback(platform, event)
    assert received == [("fb_1", "up")]  # a broken listener does not stop the others
    assert [str(e) for e in errors] == ["listener bug"]


def test_hook_on_completion(tmp_path):
    from espalier.api.testing import ScriptedModels

    received = []
    scripted = ScriptedModels(["Hello there.", "Again."])

    class Listener:
        @hookimpl
        def on_completion(self, event, platform):
            received.append(event)

    for harness in build_harness(tmp_path / "h", [Listener(), scripted]):
        harness.platform.events_inline = True  # delivered before the response, for the test to read
        body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
        reply = harness.client.post("/v1/chat/completions", json=body, headers=harness.headers("user")).json()
        streamed = harness.client.post(
            "/v1/chat/completions", json={**body, "stream": True}, headers=harness.headers("user")
        )
        assert streamed.status_code == 200
    first, second = received
    assert first.request_id == reply["id"] and first.kind == "chat" and first.model == "scripted"
    assert first.completion_ids == tuple(reply["espalier"]["completion_ids"]) and first.finish_reasons == ("stop",)
    assert first.api_key_id and first.completion_tokens == 2 and first.status == "ok"
    assert second.request_id != first.request_id  # the streamed one, once its stream ended


def test_hook_on_guardrail_decision(tmp_path):
    from espalier.api.testing import ScriptedModels

    received = []
    policies = [{"name": "swearing", "direction": "input", "scorer": "profanity", "threshold": 0.5, "action": "flag"}]

    class Listener:
        @hookimpl
        def on_guardrail_decision(self, event, platform):
            received.append(event)

    for harness in build_harness(tmp_path / "h", [Listener(), ScriptedModels(["ok"])], guardrail_policies=policies):
        harness.platform.events_inline = True
        body = {"model": "scripted", "messages": [{"role": "user", "content": "you are a fucking idiot"}]}
        reply = harness.client.post("/v1/chat/completions", json=body, headers=harness.headers("user")).json()
    [event] = received
    assert (event.policy, event.scorer, event.action, event.direction) == ("swearing", "profanity", "flag", "input")
    assert event.request_id == reply["id"] and max(event.scores.values()) > 0.5 and event.event_id


def test_hook_on_job_finished(tmp_path):
    received = []

    def explode(job):
        raise ValueError("no such input")

    class Plugin:
        @hookimpl
        def register_job_kinds(self, register):
            register(JobKind("double", run=lambda job: {"value": job.params["x"] * 2}))
            register(JobKind("explode", run=explode))

        @hookimpl
        def on_job_finished(self, event, platform):
            received.append(event)

    platform = platform_with(tmp_path, Plugin()).start()
    platform.events_inline = True
    try:
        good = wait_for(platform, platform.jobs.submit("double", {"x": 21}, created_by="key1").id)
        bad = wait_for(platform, platform.jobs.submit("explode", {}).id)
        deadline = time.monotonic() + 10
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        platform.close()
    by_id = {event.job_id: event for event in received}
    assert by_id[good.id].status == "succeeded" and by_id[good.id].result == {"value": 42}
    assert by_id[good.id].created_by == "key1" and by_id[good.id].kind == "double"
    assert by_id[bad.id].status == "failed" and "no such input" in by_id[bad.id].error and by_id[bad.id].result is None


def test_startup_failure_is_fatal_only_in_strict_mode(tmp_path):
    class Plugin:
        @hookimpl
        def startup(self, platform):
            raise RuntimeError("cannot warm up")

    platform_with(tmp_path, Plugin()).start(run_jobs=False).close()
    with pytest.raises(Exception, match="cannot warm up"):
        platform_with(tmp_path / "strict", Plugin(), strict_plugins=True).start(run_jobs=False)


def test_hook_register_models(tmp_path):
    class Plugin:
        @hookimpl
        def register_model_providers(self, register):
            register(Provider())

        @hookimpl
        def register_models(self, register):
            register(contracts.ModelSpec(name="echo-1", provider="echo", source="memory"))

    platform = platform_with(tmp_path, Plugin()).start(run_jobs=False)
    try:
        info = platform.models.info("echo-1")
        assert (info.builtin, info.plugin, info.serving_version) == (True, "probe", "base")
        model, version = platform.models.load("echo-1")
        assert version.label == "base" and model.context_window == 64
        with pytest.raises(Exception, match="cannot be removed"):
            platform.models.remove("echo-1")
        # trained versions sit beside the base one and do not serve until promoted
        added = platform.models.add_version("echo-1", label="dpo-1", adapter="/tmp/adapter", metrics={"kl": 0.1})
        assert added.status == "candidate" and added.id.startswith("ver")
        versions = {v["label"]: v for v in platform.models.info("echo-1").versions}
        assert set(versions) == {"base", "dpo-1"} and not versions["dpo-1"]["serving"]
        assert platform.models.resolve("echo-1", "dpo-1")[0].adapter == "/tmp/adapter"
        with pytest.raises(Exception, match="already has a version labelled 'dpo-1'"):
            platform.models.add_version("echo-1", label="dpo-1", adapter=None)
        with pytest.raises(Exception, match="no model named"):
            platform.models.add_version("missing", label="x", adapter=None)
    finally:
        platform.close()


def test_hook_register_prompt_templates(tmp_path):
    from espalier.core.infrastructure.contracts import TemplateSpec
    from espalier.core.sources.templates.service import render

    class Plugin:
        @hookimpl
        def register_prompt_templates(self, register):
            register(
                TemplateSpec(
                    name="shout",
                    system="Answer in capitals.",
                    user="{{ input | upper }}",
                    examples=[{"question": "hi", "answer": "HELLO"}],
                )
            )

    platform = platform_with(tmp_path, Plugin()).start(run_jobs=False)
    try:
        template = platform.templates.get("shout")
        assert (template.version, template.variables) == (1, ["input"])
        messages = render(template, {"input": "tree"})
        assert [(m.role, m.content) for m in messages] == [
            ("system", "Answer in capitals."),
            ("user", "hi"),
            ("assistant", "HELLO"),
            ("user", "TREE"),
        ]
    finally:
        platform.close()


def test_hook_register_chains(tmp_path):
    from espalier.core.infrastructure.contracts import ChainSpec

    class Plugin:
        @hookimpl
        def register_chains(self, register):
            register(ChainSpec(name="tutor", template="cot-math", memory="summary"))

    platform = platform_with(tmp_path, Plugin(), chains=[{"name": "from-config", "memory": "none"}])
    specs = platform.chain_specs
    assert specs.get("tutor").memory == "summary" and specs.entry("tutor").plugin == "probe"
    assert specs.entry("from-config").plugin == "settings" and "assistant" in specs  # built-ins alongside
    with pytest.raises(Exception, match="both plugin 'probe' and plugin 'settings'"):
        _ = platform_with(tmp_path / "dup", Plugin(), chains=[{"name": "tutor"}]).chain_specs


# Collections' parts: vector stores, keyword indexes, document extractors ---------------------------
class WideModel(Model):
    context_window = 2048  # room for a collection's sources


class WideProvider:
    name = "wide"

    def load(self, spec, *, cache_dir):
        return WideModel()


class Letters:
    """Letter counts, unit length: texts sharing letters are near (enough for a real search)."""

    name = "letters"
    dimensions = 26

    def embed(self, texts):
        rows = []
        for text in texts:
            counts = [text.lower().count(chr(ord("a") + i)) for i in range(26)]
            norm = sum(c * c for c in counts) ** 0.5 or 1.0
            rows.append([c / norm for c in counts])
        return rows


class CollectionParts:
    """A model to size chunks for and an embedder, both light, for the collection hooks' tests."""

    @hookimpl
    def register_model_providers(self, register):
        register(WideProvider())

    @hookimpl
    def register_models(self, register):
        register(contracts.ModelSpec(name="wide-1", provider="wide", source="memory"))

    @hookimpl
    def register_embedders(self, register):
        register(Letters())


def collections_platform(tmp_path, plugin, **settings):
    platform = Platform(
        Settings(home=tmp_path / "home", embedder="letters", default_model="wide-1", **settings),
        extra_plugins=[("parts", CollectionParts()), ("probe", plugin)],
        load_entry_points=False,
    )
    return platform.start(run_jobs=False)


def operator():
    from espalier.core.infrastructure.identity import Principal

    return Principal(key_id="key_op", name="op", role="operator")


def test_hook_register_vector_stores(tmp_path):
    class MemoryStore:
        name = "memory"

        def __init__(self):
            self.collections: dict[str, dict[str, tuple[list[float], dict]]] = {}
            self.queries = 0

        def add(self, collection, ids, vectors, texts, metadatas):
            rows = self.collections.setdefault(collection, {})
            for i, vector, meta in zip(ids, vectors, metadatas, strict=True):
                rows[i] = ([float(x) for x in vector], dict(meta))

        def delete(self, collection, ids, *, quiet=False):
            for i in ids:
                self.collections.get(collection, {}).pop(i, None)

        def update_metadata(self, collection, ids, metadatas):
            for i, meta in zip(ids, metadatas, strict=True):
                self.collections[collection][i] = (self.collections[collection][i][0], dict(meta))

        def query(self, collection, vector, k, where):
            self.queries += 1
            rows = self.collections.get(collection, {}).items()
            distance = [(i, 1.0 - sum(a * b for a, b in zip(vector, v, strict=True))) for i, (v, _) in rows]
            return sorted(distance, key=lambda pair: pair[1])[:k]

        def drop(self, collection):
            self.collections.pop(collection, None)

    class Plugin:
        @hookimpl
        def register_vector_stores(self, register, settings):
            seen.append(settings)
            register(store, default=True)  # offered as default: chosen over the built-in 'chroma'

    seen, store = [], MemoryStore()
    platform = collections_platform(tmp_path, Plugin())
    try:
        assert seen == [platform.settings] and platform.vector_stores.entry("memory").plugin == "probe"
        assert platform.rag.store is store and "chroma" in platform.vector_stores  # built-in alongside
        rag, me = platform.rag, operator()
        record = rag.create_collection("notes", me)
        rag.ingest("notes", me, b"Owls hunt at night.", filename="owls.txt")
        rag.ingest("notes", me, b"Zebras graze the savanna.", filename="zebras.txt")
        assert len(store.collections[rag.chroma_name(record)]) == 2
        [hit] = rag.search("notes", me, "owls hunting at night", k=1, mode="vector")
        assert hit.source == "owls.txt" and store.queries == 1
        assert not (tmp_path / "home" / "chroma").exists()  # nothing went to chromadb
        rag.delete_collection("notes", me)
        assert rag.chroma_name(record) not in store.collections
    finally:
        platform.close()
    chosen = Platform(
        Settings(home=tmp_path / "other", vector_store="chroma"),
        extra_plugins=[("probe", Plugin())],
        load_entry_points=False,
    )
    assert chosen.rag.store is chosen.vector_stores.get("chroma")  # the setting wins over an offer


def test_hook_register_keyword_indexes(tmp_path):
    class WordIndex:
        """Counts the query's words in each chunk; ``built`` remembers every build."""

        name = "words"

        def __init__(self):
            self.indexes: dict[tuple[str, int], list[tuple[str, str]]] = {}
            self.built: list[tuple[str, int, int]] = []

        def build(self, collection_id, version, ids, texts):
            self.indexes[(collection_id, version)] = list(zip(ids, texts, strict=True))
            self.built.append((collection_id, version, len(ids)))

        def has(self, collection_id, version):
            return (collection_id, version) in self.indexes

        def search(self, collection_id, version, query, k):
            words = set(query.lower().split())
            scored = [
                (i, float(len(words & set(t.lower().rstrip(".").split()))))
                for i, t in self.indexes[(collection_id, version)]
            ]
            return sorted([pair for pair in scored if pair[1] > 0], key=lambda pair: -pair[1])[:k]

        def drop(self, collection_id):
            self.indexes = {key: value for key, value in self.indexes.items() if key[0] != collection_id}

    class Plugin:
        @hookimpl
        def register_keyword_indexes(self, register, settings):
            register(index)  # no default offered: ESPALIER_KEYWORD_INDEX picks it

    index = WordIndex()
    platform = collections_platform(tmp_path, Plugin(), keyword_index="words")
    try:
        assert platform.rag.keywords is index and platform.keyword_indexes.entry("bm25").plugin == "bm25_index"
        rag, me = platform.rag, operator()
        record = rag.create_collection("notes", me)
        rag.ingest("notes", me, b"Owls hunt at night.", filename="owls.txt")
        rag.ingest("notes", me, b"Zebras graze the savanna.", filename="zebras.txt")
        assert index.built == [(record.id, 1, 1), (record.id, 2, 2)]  # rebuilt at each ingestion
        [hit] = rag.search("notes", me, "zebras savanna", k=3, mode="keyword")
        assert hit.source == "zebras.txt" and hit.score == 2.0
        assert not (tmp_path / "home" / "rag" / "bm25" / record.id).exists()  # bm25 was not used
        rag.delete_collection("notes", me)
        assert not index.has(record.id, 2)
    finally:
        platform.close()


def test_hook_register_document_extractors(tmp_path):
    from espalier.core.infrastructure.errors import InvalidInput

    class CsvExtractor:
        name = "csv"
        media_types = ("csv",)  # no suffixes: '.csv'

        def extract(self, data, filename):
            calls.append(filename)
            return "\n".join(" ".join(line.split(",")) for line in data.decode().splitlines())

    class Plugin:
        @hookimpl
        def register_document_extractors(self, register):
            register(CsvExtractor())

    calls = []
    platform = collections_platform(tmp_path, Plugin())
    try:
        types = platform.document_types
        assert types.media_type_for("birds.csv") == "csv" and types.media_type_for("a.pdf") == "pdf"  # built-ins too
        assert types.kinds == ["text", "markdown", "csv", "html", "pdf"]  # core's, then in hook order
        rag, me = platform.rag, operator()
        rag.create_collection("tables", me)
        result = rag.ingest("tables", me, b"bird,wingspan\nalbatross,3.5m", filename="birds.csv")
        assert result.document.media_type == "csv" and calls == ["birds.csv"]
        [hit] = rag.search("tables", me, "albatross wingspan", k=1, mode="keyword")
        assert hit.text == "bird wingspan\nalbatross 3.5m"
        with pytest.raises(InvalidInput, match=r"unsupported type \(\.xls\); supported: .*\.csv"):
            rag.ingest("tables", me, b"x", filename="birds.xls")
        with pytest.raises(InvalidInput, match="use text, markdown, csv, html or pdf"):
            rag.ingest("tables", me, b"x", filename="birds", media_type="xls")
    finally:
        platform.close()
    bare = Platform(
        Settings(home=tmp_path / "bare", disable_plugins=["document_extractors"]),
        extra_plugins=[("probe", Plugin())],
        load_entry_points=False,
    )
    with pytest.raises(InvalidInput, match=r"unsupported type \(\.pdf\); supported: \.csv, \.markdown, \.md"):
        bare.document_types.media_type_for("report.pdf")  # without the built-ins, no PDF


# Evaluation plots ------------------------------------------------------------------------------
def test_hook_register_plotters(tmp_path):
    from espalier.core.sources.learning.evaluation import evaluate_toxicity

    class Caps:
        name = "caps"
        categories = ["toxicity"]

        def score(self, texts, *, direction):
            return [GuardrailScore(self.name, {"toxicity": float(text.isupper())}) for text in texts]

    class TextPlotter:
        name = "text-plot"
        kinds = ("toxicity",)

        def plot(self, kind, data, *, threshold, out_dir):
            out_dir.mkdir(parents=True)
            path = out_dir / "means.txt"
            path.write_text(" ".join(f"{m}={r['mean_toxicity']}" for m, r in data["models"].items()))
            drawn.append((kind, threshold))
            return {"txt": path}

    class EchoModel:
        @hookimpl
        def register_model_providers(self, register):
            register(Provider())

        @hookimpl
        def register_models(self, register):
            register(contracts.ModelSpec(name="echo-1", provider="echo", source="memory"))

    class Plugin(EchoModel):
        @hookimpl
        def register_plotters(self, register):
            register(TextPlotter())

    def evaluate(platform):
        return evaluate_toxicity(
            platform.engine,
            platform.models,
            Caps(),
            ["echo-1"],
            ["hi", "there"],
            tmp_path / "evaluations",
            threshold=0.5,
            plotter=platform.plotter_for,
        )

    drawn = []
    platform = platform_with(tmp_path, Plugin()).start(run_jobs=False)
    try:
        assert platform.plotter_for("toxicity") is platform.plotters.get("text-plot")  # asked before the built-in
        assert platform.plotters.entry("matplotlib").plugin == "plots" and platform.plotter_for("policy") is not None
        record = evaluate(platform)
        assert drawn == [("toxicity", 0.5)] and set(record.artifacts) == {"txt"}
        assert Path(record.artifacts["txt"]).read_text() == "echo-1=0.0" and "plot" not in record.results
    finally:
        platform.close()

    platform = platform_with(tmp_path / "bare", EchoModel(), disable_plugins=["plots"]).start(run_jobs=False)
    try:
        assert platform.plotter_for("toxicity") is None
        record = evaluate(platform)  # still runs and is stored, without a plot
        assert record.artifacts == {} and "no plotter for 'toxicity'" in record.results["plot"]
        assert platform.evaluations.get(record.id).results["models"]["echo-1"]["mean_toxicity"] == 0.0
    finally:
        platform.close()


def test_hook_register_reward_scorers(tmp_path):
    """The reward model service scores with the loader a plugin offers; the setting picks another."""

    class LengthScorer:
        def __init__(self, path):
            self.path = path

        def score(self, prompts, completions):
            return [float(len(c)) for c in completions]

    class LengthLoader:
        name = "length"

        def load(self, path):
            loaded.append(path)
            return LengthScorer(path)

    class Plugin:
        @hookimpl
        def register_reward_scorers(self, register):
            register(LengthLoader(), default=True)

    loaded = []
    platform = platform_with(tmp_path, Plugin()).start(run_jobs=False)
    try:
        assert platform.reward_scorers.names() == ["builtin", "length", "sequence-classifier"]
        record = platform.reward_models.register(
            path=str(tmp_path / "artifact"),
            base_model="x",
            data_sha256="0" * 64,
            pairs=2,
            metrics={"accuracy": 1.0},
            current_accuracy_same_holdout=None,
            job_id=None,
        )
        _, scores = platform.reward_models.score([("q", "short"), ("q", "a longer answer")])
        assert scores == [5.0, 15.0] and loaded == [tmp_path / "artifact"]
        platform.reward_models.score([("q", "again")])
        assert len(loaded) == 1  # one load per version
        assert record.is_current
    finally:
        platform.close()
    other = platform_with(tmp_path / "b", Plugin(), reward_scorer="builtin")
    try:
        assert other.reward_models._loader().name == "builtin"
    finally:
        other.close()


def test_a_failing_startup_is_named_reported_and_the_others_still_start(tmp_path, capsys):
    from espalier.api.testing import build_harness

    started = []

    class Broken:
        @hookimpl(tryfirst=True)
        def startup(self, platform):
            raise RuntimeError("cannot warm up")

    class Healthy:
        @hookimpl
        def startup(self, platform):
            started.append(platform.started)

    harness = build_harness(tmp_path / "home", [Broken(), Healthy()])
    espalier = next(harness)
    try:
        assert started == [False]  # ran although the first startup raised
        logged = capsys.readouterr().err  # the app's JSON log lines, traceback included
        assert "plugin 'Broken' failed in startup" in logged and "cannot warm up" in logged
        ready = espalier.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["plugins_failed_startup"] == ["Broken"]
        assert ready.json()["checks"]["plugins"] is False
        failures = espalier.client.get("/api/plugins", headers=espalier.headers("operator")).json()["failures"]
        assert [(f["name"], f["hook"]) for f in failures] == [("Broken", "startup")]
        # the built-ins started: a collection can be made and searched
        admin = espalier.headers("admin")
        created = espalier.client.post("/api/collections", json={"name": "notes"}, headers=admin)
        assert created.status_code == 201, created.text
    finally:
        harness.close()
