"""What a caller relies on: answers, output, errors, the module cache, the tool and the plugin."""

from __future__ import annotations

import statistics
import time

import pluggy
import pytest

from espalier.core.infrastructure import hookspecs
from espalier.core.infrastructure.contracts import Tool
from espalier.plugins import sandbox as sandbox_plugin
from espalier.plugins.sandbox import PythonTool, Sandbox, SandboxUnavailable, default_cache_dir
from espalier.plugins.sandbox.wasm import locate_python_wasm


def test_python_wasm_is_found_through_package_metadata():
    path = locate_python_wasm()
    assert path.name == "python.wasm" and path.stat().st_size > 10_000_000


def test_arithmetic_program_returns_the_answer(sandbox, backend):
    code = "total = 0\nfor i in range(1, 101):\n    total += i * i\nanswer = {'sum': total, 'mean': total / 100}"
    r = sandbox.run(code, backend=backend)
    assert r.ok, r
    assert r.value == {"sum": 338350, "mean": 3383.5}
    assert r.backend == backend and not r.timed_out and r.error is None


def test_stdout_and_stderr_are_captured(sandbox, backend):
    r = sandbox.run("import sys\nprint('hello', 6 * 7)\nprint('warn', file=sys.stderr)\nanswer = 1", backend=backend)
    assert r.ok and r.stdout == "hello 42\n" and "warn" in r.stderr


def test_syntax_error_is_reported_clearly_without_running(sandbox):
    r = sandbox.run("def f(:\n    return 1\n")
    assert not r.ok and r.error.startswith("SyntaxError") and "line 1" in r.error
    assert r.duration_s < 0.5


def test_runtime_error_names_the_exception_and_line(sandbox, backend):
    r = sandbox.run("x = 1\ny = x / 0\n", backend=backend)
    assert not r.ok and r.error == "ZeroDivisionError: division by zero"
    assert 'program.py", line 2' in r.stderr


def test_answer_must_be_json(sandbox, backend):
    r = sandbox.run("answer = {1, 2}", backend=backend)
    assert not r.ok and "not JSON-serialisable" in r.error
    r = sandbox.run("answer = float('nan')", backend=backend)
    assert not r.ok


def test_custom_answer_variable_and_missing_answer(sandbox, backend):
    assert sandbox.run("result = [1, 'a', None, True]", backend=backend, answer_var="result").value == [
        1,
        "a",
        None,
        True,
    ]
    r = sandbox.run("x = 3", backend=backend)
    assert r.ok and r.value is None


def test_numpy_in_bwrap(sandbox, bwrap_reason):
    assert bwrap_reason is None, bwrap_reason
    r = sandbox.run(
        "import numpy as np\nanswer = float(np.linalg.det(np.array([[2.0, 1.0], [1.0, 3.0]])))", backend="bwrap"
    )
    assert r.ok, r
    assert abs(r.value - 5.0) < 1e-9


def test_unknown_backend_is_refused(sandbox):
    with pytest.raises(SandboxUnavailable):
        sandbox.run("answer = 1", backend="docker")


def test_module_cache_makes_the_second_sandbox_fast(sandbox, cache_dir):
    assert list(cache_dir.glob("*.cwasm")), "the first Sandbox should have serialised the module"
    started = time.monotonic()
    second = Sandbox(cache_dir)
    second.warm_up("wasm")
    created = time.monotonic() - started
    assert second.run("answer = 2 ** 10").value == 1024
    elapsed = time.monotonic() - started
    print(
        f"\nsecond sandbox with a warm cache: created in {created * 1000:.1f} ms, "
        f"first answer after {elapsed * 1000:.0f} ms"
    )
    # Compiling python.wasm takes 6-12 s here; deserialising the cached module, milliseconds.
    assert elapsed < 2.0


def test_default_cache_dir_follows_espalier_home(monkeypatch, tmp_path):
    monkeypatch.setenv("ESPALIER_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "cache" / "sandbox"
    monkeypatch.delenv("ESPALIER_HOME")
    assert str(default_cache_dir()).endswith(".espalier/cache/sandbox")


def test_overhead_per_run(sandbox, backend):
    durations = []
    for _ in range(15):
        started = time.monotonic()
        r = sandbox.run("answer = 1", backend=backend)
        durations.append(time.monotonic() - started)
        assert r.ok
    durations.sort()
    p50 = statistics.median(durations)
    p95 = durations[int(round(0.95 * (len(durations) - 1)))]
    print(f"\n{backend} per-run overhead over {len(durations)} runs: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    assert p50 < 2.0


def test_python_tool_follows_the_tool_protocol(sandbox):
    tool = PythonTool(sandbox)
    assert isinstance(tool, Tool)
    assert tool.name == "python" and tool.parameters["required"] == ["code"]
    ok = tool.invoke({"code": "print('hi')\nanswer = 21 * 2"})
    assert not ok.is_error and "answer: 42" in ok.output and "hi" in ok.output and ok.data["value"] == 42
    bad = tool.invoke({"code": "raise ValueError('nope')"})
    assert bad.is_error and "ValueError: nope" in bad.output
    assert tool.invoke({}).is_error


def test_plugin_registers_the_python_tool():
    pm = pluggy.PluginManager("espalier")
    pm.add_hookspecs(hookspecs)
    pm.register(sandbox_plugin, name="sandbox")
    tools = []
    pm.hook.register_tools(register=tools.append, platform=None)  # the sandbox tool needs no platform
    assert [t.name for t in tools] == ["python"]
    assert isinstance(tools[0], Tool)
