"""The sandbox: the security boundary for all model-written code (PAL programs, the ``python`` tool).

Code never runs in the server process. Two backends, both out of process:

* ``wasm`` (default): CPython 3.12 compiled to WASI under wasmtime, with fuel, memory and
  wall-clock limits, an empty environment, no sockets, and only a per-run scratch directory.
* ``bwrap``: the host's CPython (with allow-listed packages such as numpy) under bubblewrap
  namespaces, a seccomp filter, an unprivileged uid and rlimits.

Use :class:`Sandbox` directly (``Sandbox().run(code).value``) or the ``python`` tool this
plugin registers.
"""

from espalier import hookimpl
from espalier.plugins.sandbox._common import Limits
from espalier.plugins.sandbox.result import SandboxResult, SandboxUnavailable
from espalier.plugins.sandbox.sandbox import Sandbox, default_cache_dir
from espalier.plugins.sandbox.tool import PythonTool

__all__ = ["Limits", "PythonTool", "Sandbox", "SandboxResult", "SandboxUnavailable", "default_cache_dir"]


@hookimpl
def register_tools(register):
    register(PythonTool())
