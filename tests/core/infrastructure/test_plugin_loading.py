"""Loading plugins: built-ins, entry points (a real installed example), the allow-list, broken
plugins, duplicate names, misspelt hooks, strict mode, introspection."""

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from espalier import hookimpl
from espalier.core.infrastructure.errors import PluginError
from espalier.core.infrastructure.plugin_host import create_plugin_manager
from espalier.core.infrastructure.settings import Settings
from espalier.core.platform import Platform
from tests.support import REPO


@pytest.fixture(scope="session")
def example_site(tmp_path_factory) -> Path:
    """The example plugin, really installed (pip, from its own pyproject) into a private folder."""
    target = tmp_path_factory.mktemp("example-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO / "examples" / "espalier-hello"),
        ],
        check=True,
    )
    return target


@pytest.fixture
def with_example(example_site, monkeypatch):
    monkeypatch.syspath_prepend(str(example_site))
    importlib.invalidate_caches()
    yield example_site
    sys.modules.pop("espalier_hello", None)


def fake_distribution(root: Path, dist: str, module: str, source: str, ep_name: str | None = None) -> None:
    """A minimal installed distribution: a module plus its dist-info with one `espalier` entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[espalier]\n{ep_name or module} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    importlib.invalidate_caches()


def names(host):
    return {row["name"] for row in host.describe()}


def test_builtins_load_without_entry_points(settings):
    host = create_plugin_manager(settings, load_entry_points=False)
    rows = {row["name"]: row for row in host.describe()}
    assert rows["calculator"]["builtin"] and rows["calculator"]["hooks"] == ["register_tools"]


def test_example_plugin_loads_through_its_entry_point(with_example, tmp_path):
    platform = Platform(Settings(home=tmp_path))
    rows = {row["name"]: row for row in platform.plugins.describe()}
    assert rows["hello"] == {
        "name": "hello",
        "version": "0.1.0",
        "distribution": "espalier-hello",
        "builtin": False,
        "hooks": ["register_routes", "register_tools"],
    }
    assert platform.tools.entry("word_count").plugin == "hello"


def test_example_plugin_route_and_tool_work_in_the_app(with_example, tmp_path):
    from espalier.api.testing import build_harness

    for harness in build_harness(tmp_path / "h", [], load_entry_points=True):
        response = harness.client.get("/api/hello", headers=harness.headers("user"))
        assert response.json()["message"] == "Hello, world!"
        plugins = harness.client.get("/api/plugins", headers=harness.headers("operator")).json()
        assert {"calculator", "hello"} <= {p["name"] for p in plugins["plugins"]}
        assert harness.platform.tools.get("word_count").invoke({"text": "a b"}).data == 2


def test_allow_list_restricts_entry_points(with_example, tmp_path):
    assert "hello" not in names(create_plugin_manager(Settings(home=tmp_path, plugins=[])))
    assert "hello" in names(create_plugin_manager(Settings(home=tmp_path, plugins=["espalier_hello"])))
    assert "hello" not in names(create_plugin_manager(Settings(home=tmp_path, plugins=["something-else"])))
    # the allow-list governs third parties; built-ins stay
    assert "calculator" in names(create_plugin_manager(Settings(home=tmp_path, plugins=[])))


def test_broken_plugin_is_reported_by_name_and_skipped(site, tmp_path):
    fake_distribution(site, "espalier-broken", "espalier_broken", "raise ImportError('needs libfoo')\n")
    host = create_plugin_manager(Settings(home=tmp_path))
    assert "espalier_broken" not in names(host)
    [failure] = [f for f in host.failures if f.name == "espalier_broken"]
    assert failure.distribution == "espalier-broken" and "needs libfoo" in failure.error
    assert "espalier_broken" in failure.error and ":1" in failure.error  # the file and line it was raised at


def test_a_broken_plugins_traceback_is_logged(site, tmp_path, caplog):
    fake_distribution(site, "espalier-broken", "espalier_broken", "x = 1\ny = undefined_name\n")
    with caplog.at_level("ERROR", logger="espalier.plugins"):
        create_plugin_manager(Settings(home=tmp_path))
    [record] = [r for r in caplog.records if "espalier_broken" in r.getMessage()]
    assert record.exc_info is not None and "NameError" in record.getMessage() and ":2" in record.getMessage()


def test_broken_plugin_fails_start_up_in_strict_mode(site, tmp_path):
    fake_distribution(site, "espalier-broken", "espalier_broken", "raise ImportError('needs libfoo')\n")
    with pytest.raises(PluginError, match="espalier_broken.*needs libfoo"):
        create_plugin_manager(Settings(home=tmp_path, strict_plugins=True))


def test_misspelt_hook_is_rejected(site, tmp_path):
    fake_distribution(
        site,
        "espalier-typo",
        "espalier_typo",
        "from espalier import hookimpl\n\n@hookimpl\ndef register_tool(register):\n    pass\n",
    )
    # The plugin with the typo is skipped and reported; the others keep their contributions.
    host = create_plugin_manager(Settings(home=tmp_path))
    assert "espalier_typo" not in names(host) and "calculator" in names(host)
    [failure] = [f for f in host.failures if f.name == "espalier_typo"]
    assert "register_tool" in failure.error and "misspelt" in failure.error
    with pytest.raises(PluginError, match="register_tool"):
        create_plugin_manager(Settings(home=tmp_path, strict_plugins=True))


COMMAND_PLUGIN = """
from espalier import hookimpl
from espalier.core.infrastructure.contracts import Command

def greet(name: str = "world") -> None:
    print(f"hello {name}")

def models() -> None:
    print("not the built-in")

@hookimpl
def register_commands(register):
    register(Command("greet", greet, help="Say hello from a plugin"))
    register(Command("models", models, help="Shadows a built-in"))
"""


def test_plugin_commands_are_in_help_and_survive_another_plugins_typo(site, tmp_path):
    fake_distribution(site, "espalier-greet", "espalier_greet", COMMAND_PLUGIN)
    fake_distribution(
        site,
        "espalier-typo",
        "espalier_typo",
        "from espalier import hookimpl\n\n@hookimpl\ndef register_tool(register):\n    pass\n",
    )
    env = {**os.environ, "ESPALIER_HOME": str(tmp_path), "PYTHONPATH": str(site), "COLUMNS": "200"}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "espalier.api.cli", *args], env=env, capture_output=True, text=True
        )

    shown = cli("--help")
    assert shown.returncode == 0 and "greet" in shown.stdout and "Say hello from a plugin" in shown.stdout
    assert "has the name of a built-in command" in shown.stderr and "'models'" in shown.stderr
    ran = cli("greet", "--name", "Ada")
    assert ran.returncode == 0 and "hello Ada" in ran.stdout
    assert "not the built-in" not in cli("models", "list").stdout  # the built-in still answers


def test_wrong_hook_arguments_are_rejected(site, tmp_path):
    fake_distribution(
        site,
        "espalier-args",
        "espalier_args",
        "from espalier import hookimpl\n\n@hookimpl\ndef register_tools(register, extra):\n    pass\n",
    )
    host = create_plugin_manager(Settings(home=tmp_path))
    assert "espalier_args" not in names(host)
    assert "extra" in host.failures[0].error


class Tool:
    description = "d"
    parameters = {"type": "object"}

    def __init__(self, name):
        self.name = name

    def invoke(self, arguments):
        return None


def test_duplicate_names_fail_naming_both_plugins(tmp_path):
    class First:
        @hookimpl
        def register_tools(self, register):
            register(Tool("calculator"))

    platform = Platform(Settings(home=tmp_path), extra_plugins=[("imposter", First())], load_entry_points=False)
    with pytest.raises(PluginError, match="tool 'calculator' is registered by both plugin") as error:
        platform.start()
    assert "'imposter'" in str(error.value) and "'calculator'" in str(error.value)


def test_a_disabled_builtin_can_be_replaced(tmp_path):
    class Mine:
        @hookimpl
        def register_tools(self, register):
            register(Tool("calculator"))

    settings = Settings(home=tmp_path, disable_plugins=["calculator"])
    platform = Platform(settings, extra_plugins=[("mine", Mine())], load_entry_points=False)
    assert platform.tools.entry("calculator").plugin == "mine"


def test_invalid_contributions_are_refused(tmp_path):
    class Bad:
        @hookimpl
        def register_tools(self, register):
            register(object())

    platform = Platform(Settings(home=tmp_path), extra_plugins=[("bad", Bad())], load_entry_points=False)
    with pytest.raises(PluginError, match="plugin 'bad' registered a tool with an invalid name"):
        _ = platform.tools


def test_hook_implementation_may_take_fewer_arguments(tmp_path):
    seen = []

    class Quiet:
        @hookimpl
        def on_feedback(self, event):  # the spec also offers `platform`
            seen.append(event)

    host = create_plugin_manager(Settings(home=tmp_path), extra_plugins=[("quiet", Quiet())], load_entry_points=False)
    others = [plugin for plugin in host.pm.get_plugins() if host.pm.get_name(plugin) != "quiet"]
    host.pm.subset_hook_caller("on_feedback", remove_plugins=others)(event="e", platform=None)
    assert seen == ["e"]


def test_plugins_command_lists_json(with_example, tmp_path):
    env = {**os.environ, "ESPALIER_HOME": str(tmp_path), "PYTHONPATH": str(with_example)}
    result = subprocess.run(
        [sys.executable, "-m", "espalier.api.cli", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(result.stdout)
    assert {row["name"] for row in data["plugins"]} >= {"calculator", "hello"}
    assert data["failures"] == []
    hello = next(row for row in data["plugins"] if row["name"] == "hello")
    assert "word_count" in hello["contributes"]["tool"] and hello["contributes"]["route"]
    assert data["problems"] == []


@pytest.mark.parametrize(
    "source, fragment",
    [
        (
            """
            from espalier import hookimpl
            from espalier.core.infrastructure.contracts import ToolResult

            class Twin:
                name, description, parameters = "calculator", "a second calculator", {"type": "object"}

                def invoke(self, arguments):
                    return ToolResult(output="0")

            @hookimpl
            def register_tools(register):
                register(Twin())
            """,
            "calculator",
        ),
        (
            """
            from litestar import get
            from espalier import hookimpl

            @get("/api/open")
            def open_route() -> str:
                return "anyone?"

            @hookimpl
            def register_routes(register):
                register(open_route)
            """,
            "/api/open (open_route, from plugin 'espalier_clash')",
        ),
    ],
)
def test_plugins_command_checks_what_serve_checks(site, tmp_path, source, fragment):
    fake_distribution(site, "espalier-clash", "espalier_clash", source)
    env = {**os.environ, "ESPALIER_HOME": str(tmp_path), "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-m", "espalier.api.cli", "plugins", "--json"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 1, result.stderr
    problems = json.loads(result.stdout)["problems"]
    assert problems and fragment in problems[0]


def test_the_fixture_names_an_installed_plugin_by_its_entry_point(with_example, tmp_path):
    import espalier_hello

    from espalier.api.testing import build_harness, plugin_entry

    assert plugin_entry(espalier_hello) == ("hello", espalier_hello)  # as `espalier plugins` names it
    assert plugin_entry(("custom", espalier_hello)) == ("custom", espalier_hello)
    for harness in build_harness(tmp_path / "h", [espalier_hello]):
        assert "hello" in {row["name"] for row in harness.platform.plugins.describe()}


def test_both_lists_take_plugin_and_distribution_names_and_warn_on_unknown_ones(with_example, tmp_path, caplog):
    # the example's distribution is espalier-hello, its entry point (plugin name) hello
    assert "hello" in names(create_plugin_manager(Settings(home=tmp_path, plugins=["hello"])))
    assert "hello" in names(create_plugin_manager(Settings(home=tmp_path, plugins=["espalier-hello"])))
    assert "hello" not in names(create_plugin_manager(Settings(home=tmp_path, disable_plugins=["hello"])))
    assert "hello" not in names(create_plugin_manager(Settings(home=tmp_path, disable_plugins=["espalier-hello"])))
    with caplog.at_level("WARNING", logger="espalier.plugins"):
        create_plugin_manager(Settings(home=tmp_path, plugins=["helo"], disable_plugins=["calculater"]))
    text = caplog.text
    assert "ESPALIER_PLUGINS names 'helo'" in text and "ESPALIER_DISABLE_PLUGINS names 'calculater'" in text
