"""Plugin authors import from one place: ``espalier``. The example plugin and the plugin guide do."""

import ast
import re

import espalier
from tests.support import REPO


def deep_imports(source: str) -> list[str]:
    """``espalier.*`` modules a piece of code imports (the root package itself is fine)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("espalier."):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("espalier.")]
    return found


def test_every_exported_name_resolves():
    for name in espalier.__all__:
        assert getattr(espalier, name) is not None, name
    assert espalier.Tool.__module__ == "espalier.core.infrastructure.contracts"
    assert espalier.errors.InvalidInput is espalier.InvalidInput


def test_an_unknown_name_is_an_attribute_error():
    try:
        espalier.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("espalier.NoSuchThing resolved")


def test_the_example_plugin_imports_only_from_espalier():
    sources = [p for p in (REPO / "examples").rglob("*.py") if not {"build", "dist"} & set(p.parts)]
    assert sources
    for path in sources:
        assert deep_imports(path.read_text()) == [], path


def test_every_example_in_the_plugin_guide_imports_only_from_espalier():
    text = (REPO / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 10
    for block in blocks:
        assert deep_imports(block) == [], block


def test_the_checker_sees_a_deep_import():
    assert deep_imports("from espalier.core.infrastructure.contracts import Tool") == [
        "espalier.core.infrastructure.contracts"
    ]
    assert deep_imports("from espalier import Tool") == []
