"""Generates the hook reference in ``docs/plugins.md`` from ``hookspecs.py``.

``python -m espalier.core.infrastructure.hookdocs --write docs/plugins.md`` rewrites the part between the
markers; a test fails when the file is out of date or a hook lacks any part of its docs.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from espalier.core.infrastructure import hookspecs

START = "<!-- hooks:start (generated from core/infrastructure/hookspecs.py: do not edit by hand) -->"
END = "<!-- hooks:end -->"
REQUIRED_PARTS = (":returns:", ":since:", "Example::")


def hook_functions() -> dict[str, object]:
    return {
        name: function
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, "espalier_spec")
    }


def missing_docs() -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {}
    for name, function in hook_functions().items():
        doc = inspect.getdoc(function) or ""
        lacking = [part for part in REQUIRED_PARTS if part not in doc]
        for parameter in inspect.signature(function).parameters:
            if f":param {parameter}:" not in doc:
                lacking.append(f":param {parameter}:")
        if lacking:
            problems[name] = lacking
    return problems


def _markdown(text: str) -> str:
    text = re.sub(r":class:`~?(?:[\w.]+\.)?(\w+)`", r"`\1`", text)
    return text.replace("``", "`")


def render() -> str:
    lines = [START, ""]
    for name, function in sorted(hook_functions().items()):
        signature = str(inspect.signature(function)).replace("'", "")
        options = function.espalier_spec  # type: ignore[attr-defined]
        flags = [flag for flag in ("firstresult", "historic") if options.get(flag)]
        lines += [f"### `{name}{signature}`", ""]
        if flags:
            lines += [f"*{', '.join(flags)}*", ""]
        doc = inspect.getdoc(function) or ""
        summary, _, rest = doc.partition("\n\n")
        lines += [_markdown(summary), ""]
        in_example = False
        for line in rest.splitlines():
            if line.strip() == "Example::":
                lines += ["Example:", "", "```python"]
                in_example = True
                continue
            if in_example:
                if lines[-1] != "```python" or line.strip():
                    lines.append(line[4:] if line.startswith("    ") else line)
                continue
            line = _markdown(line)
            if line.startswith(":param "):
                parameter, _, text = line[len(":param ") :].partition(":")
                lines.append(f"- **`{parameter}`**: {text.strip()}")
            elif line.startswith(":returns:"):
                lines.append(f"- **returns**: {line[len(':returns:') :].strip()}")
            elif line.startswith(":since:"):
                lines.append(f"- **since**: {line[len(':since:') :].strip()}")
            elif line.startswith("    ") and lines and lines[-1].startswith("- "):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line)
        if in_example:
            while lines and not lines[-1].strip():
                lines.pop()
            lines.append("```")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def rewrite(text: str) -> str:
    before, start, rest = text.partition(START)
    if not start:
        raise ValueError(f"marker missing: {START}")
    _, end, after = rest.partition(END)
    if not end:
        raise ValueError(f"marker missing: {END}")
    return before + render() + after


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--write":
        path = Path(argv[1])
        path.write_text(rewrite(path.read_text()))
        return 0
    sys.stdout.write(render() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
