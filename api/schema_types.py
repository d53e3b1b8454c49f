"""Bounded scalars for request schemas (query parameters take ``Parameter(ge=..., le=INT64_MAX)``).

Integers a client sends fit a signed 64-bit value (what the databases and the engine's random
generators hold), so an absurd number is a 400 at the schema, never an overflow deep inside a
handler; counts are never negative.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

#: Any integer field of a request body.
Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
#: An integer field of a request body that cannot be negative.
Count = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]

__all__ = ["INT64_MAX", "INT64_MIN", "Count", "Int64"]
