"""JSON-Schema-constrained decoding (``GenerationParams.json_schema``) with llguidance.

llguidance (the grammar engine behind guidance, also used by vLLM and llama.cpp) compiles the
schema into a token-level matcher; before each sampling step the tokens that cannot continue a
valid document are masked out, so the reply is always JSON that matches the schema (unless
``max_tokens`` cuts it short). Its masks are computed on the CPU in tens of microseconds a token.
The tokenizer adapter is built once per loaded model.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from espalier.core.infrastructure.errors import InvalidInput

_lock = threading.Lock()
_tokenizers: dict[int, Any] = {}


def _ll_tokenizer(tokenizer: Any, n_vocab: int) -> Any:
    import llguidance.hf

    key = id(tokenizer)
    with _lock:
        if key not in _tokenizers:
            _tokenizers[key] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab)
        return _tokenizers[key]


SAFE_INTEGER = 2**53 - 1
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SUBSCHEMAS = ("items", "additionalProperties", "contains", "propertyNames", "unevaluatedProperties")


def bounded(schema: Any, *, close: bool = True) -> Any:
    """What the decoder keeps to: a narrower schema whose every document is valid under ``schema``,
    without the open ends a small model runs into until ``max_tokens`` cuts the document short
    (both seen with the shipped 135M model):

    * an integer without a bound is held to JSON's interoperable range, plus or minus 2**53 - 1
      (RFC 8259, section 6): JSON's number grammar is unbounded (``population: int`` went on for
      a hundred digits);
    * an object that names its ``properties`` and says nothing of others gets only those (as
      ``strict`` schemas say with ``additionalProperties: false``): under JSON Schema's default an
      extra ``"description"`` property went on for the rest of the tokens.

    A bound or an ``additionalProperties`` the schema gives is kept. Objects are not closed inside
    ``allOf`` branches nor beside a ``$ref`` (``close=False``): each branch names only part of the
    properties, and closing one would refuse the others'."""
    if isinstance(schema, list):
        return [bounded(item, close=close) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = dict(schema)
    types = out.get("type")
    if types == "integer" or (isinstance(types, list) and "integer" in types):
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -SAFE_INTEGER
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = SAFE_INTEGER
    composed = any(key in out for key in ("allOf", "$ref", "dependentSchemas", "if"))
    if (
        close
        and not composed
        and isinstance(out.get("properties"), Mapping)
        and not any(key in out for key in ("additionalProperties", "patternProperties", "unevaluatedProperties"))
    ):
        out["additionalProperties"] = False
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [bounded(item, close=key != "allOf") for item in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), Mapping):
            out[key] = {name: bounded(sub) for name, sub in out[key].items()}
    for key in _SUBSCHEMAS:
        if isinstance(out.get(key), Mapping):
            out[key] = bounded(out[key])
    return out


def check_schema(grammar: str) -> None:
    """Refuse a schema llguidance cannot enforce, naming what it cannot (``Unimplemented keys:
    ["not"]``, a look-around in a ``pattern``, ``Unknown format: ...``): decoding under a schema
    with parts left unenforced would return JSON the client's own validation rejects."""
    import llguidance

    error = llguidance.LLMatcher.validate_grammar(grammar)
    if not error:
        _, warnings = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
        error = "; ".join(warnings)
    if error:
        raise InvalidInput(
            f"the JSON Schema cannot be enforced by constrained decoding: {error.strip()}",
            code="invalid_schema",
        )


class JsonConstraint:
    """One matcher per candidate; ``mask`` before sampling, ``advance`` after."""

    def __init__(self, tokenizer: Any, schema: Mapping[str, Any], n: int, n_vocab: int):
        import llguidance
        import llguidance.torch

        self._torch = llguidance.torch
        ll = _ll_tokenizer(tokenizer, n_vocab)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(bounded(dict(schema))), defaults={"whitespace_flexible": False}
        )
        check_schema(grammar)
        self.matchers = [llguidance.LLMatcher(ll, grammar, log_level=0) for _ in range(n)]
        error = self.matchers[0].get_error()
        if error:
            raise InvalidInput(f"the JSON Schema cannot be used to constrain decoding: {error}", code="invalid_schema")
        self.bitmask = llguidance.torch.allocate_token_bitmask(n, ll.vocab_size)
        self.n_vocab = n_vocab

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits with every token that would break the schema set to -inf (rows whose matcher is
        finished or failed are left alone: the decoding loop ends those candidates)."""
        rows = [i for i, m in enumerate(self.matchers) if not m.is_stopped() and not m.is_error()]
        if not rows:
            return logits
        for row in rows:
            self._torch.fill_next_token_bitmask(self.matchers[row], self.bitmask, row)
        # numpy, not torch: llguidance's own apply compiles a kernel on first use (seconds on a
        # CPU), and torch's threaded small ops crawl on a busy machine; this is under a millisecond
        out = logits.detach().float().cpu().numpy().copy()
        bits = np.unpackbits(self.bitmask[rows].numpy().view(np.uint8), axis=-1, bitorder="little")
        width = min(out.shape[-1], bits.shape[-1])
        for number, row in enumerate(rows):
            out[row, :width][bits[number, :width] == 0] = -np.inf
            out[row, width:] = -np.inf
        return torch.from_numpy(out).to(logits.device)

    def advance(self, row: int, token: int) -> bool:
        """Feed the sampled token; True when that candidate's document is complete."""
        matcher = self.matchers[row]
        if matcher.is_stopped() or matcher.is_error():
            return True
        matcher.consume_token(token)
        return matcher.is_stopped()

    def accepting(self, row: int) -> bool:
        return self.matchers[row].is_accepting()
