"""Files a request names on the server: only under the data folder (``ESPALIER_HOME``).

Over HTTP the server must not become a way to read any file it can: a job's result quotes a few
of the prompts or lines it read. The CLI, a local operator, may name any file.
"""

from __future__ import annotations

from pathlib import Path

from espalier.core.infrastructure.errors import InvalidInput

#: Job parameters that name a file the job reads (``POST /api/jobs``).
PATH_PARAMS = frozenset({"prompts_path", "sft_path", "data_path", "eval_path", "prompts_file"})


def inside_home(home: Path, path: str, field: str = "prompts_path") -> Path:
    """Over HTTP a file the job reads must lie under the data folder: the server must not become a
    way to read any file it can (a job's result quotes a few prompts)."""
    base = Path(home).resolve()
    target = (base / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    if not target.is_relative_to(base):
        raise InvalidInput(
            f"{field} must be a file under the data folder ({base}); copy the file there"
            + (", or send the prompts in 'prompts'" if field == "prompts_path" else ""),
            code=f"{field}_outside_home",
        )
    return target
