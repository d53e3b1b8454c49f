"""Attention over each row's own keys, so a sequence decodes the same alone or in a batch.

A batch of sequences of different lengths shares one left-padded KV cache. Masking the padding
would work, but sdpa then takes another kernel than for a lone unpadded sequence and the logits
change in the last bits; with bfloat16 that flips a greedy choice now and then. Instead, the
engine passes ``espalier_row_starts`` (where each row's real keys begin) and each run of rows
with the same start gets exactly the sdpa call it would get alone. Calls without that argument
(prefill, a batch without padding, anyone else using the model) are plain sdpa.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

ROW_ATTENTION = "espalier_rows"
_registered = False


def _row_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    espalier_row_starts: Sequence[int] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if espalier_row_starts is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs, row, rows = [], 0, len(espalier_row_starts)
    while row < rows:
        start, end = espalier_row_starts[row], row + 1
        while end < rows and espalier_row_starts[end] == start:
            end += 1
        output, _ = sdpa_attention_forward(
            module, query[row:end], key[row:end, :, start:], value[row:end, :, start:], None, **kwargs
        )
        outputs.append(output)
        row = end
    return torch.cat(outputs), None


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ROW_ATTENTION, _row_attention)
    # Callers that do pass a mask (padded prompts elsewhere) get sdpa's mask, as before.
    AttentionMaskInterface.register(ROW_ATTENTION, sdpa_mask)
    _registered = True


def enable_row_attention(model: Any) -> bool:
    """Switch a model that uses sdpa to row attention; False (and unchanged) for any other."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or getattr(config, "sliding_window", None):
        return False
    try:
        _register()
        model.set_attn_implementation(ROW_ATTENTION)
    except Exception:  # an architecture that cannot switch keeps sdpa and decodes unbatched
        return False
    return model.config._attn_implementation == ROW_ATTENTION
