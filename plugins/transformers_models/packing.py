"""Prompt passes on pre-packed weights.

On the CPU, every bfloat16 matrix product through oneDNN first copies the weight matrix into
oneDNN's blocked layout, on every call: for a prompt pass of the shipped model that is 211 copies,
a sizeable part of the time to the first token. :func:`pack_linear_weights` makes those copies once,
at load, and the engine runs prompt passes (:func:`packed_prefill`) on them. The results are the
same to the last bit (the same kernel runs on the same layout; :func:`pack_linear_weights` checks
it on this machine before packing anything, and ``tests/plugins/test_prompt_passes.py``
checks a whole prompt pass). Decode steps keep the plain weights: they run on PyTorch's own
kernels, so that a row's logits do not depend on its batch (see :mod:`.engine`).

The packed copies cost as much memory again as the linear layers' weights (about 270 MB for the
shipped model); ``ESPALIER_PACK_PREFILL_WEIGHTS=false`` leaves them out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_state = threading.local()  # .on: this thread is running a prompt pass on packed weights


@contextmanager
def packed_prefill() -> Iterator[None]:
    """Linear layers of packed models use their packed weights in this thread meanwhile."""
    _state.on = True
    try:
        yield
    finally:
        _state.on = False


def _available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise"))  # fmt: skip


def _packed_linear(module: torch.nn.Linear, packed: torch.Tensor) -> Any:
    plain = type(module).forward.__get__(module)

    def forward(input: torch.Tensor) -> torch.Tensor:
        if getattr(_state, "on", False) and input.dtype == packed.dtype and torch._C._get_mkldnn_enabled():
            return torch.ops.mkldnn._linear_pointwise(input, packed, module.bias, "none", [], "")
        return plain(input)

    return forward


def _same_bits(weight: torch.Tensor, packed: torch.Tensor) -> bool:
    """Does the packed product give exactly what ``F.linear`` gives, here, at a few prompt lengths?"""
    generator = torch.Generator().manual_seed(0)
    for rows in (1, 5, 37):
        sample = torch.randn(1, rows, weight.shape[1], generator=generator).to(weight.dtype)
        if not torch.equal(F.linear(sample, weight), torch.ops.mkldnn._linear_pointwise(sample, packed, None, "none", [], "")):
            return False
    return True


def pack_linear_weights(model: torch.nn.Module) -> int:
    """Give every bfloat16 ``nn.Linear`` of ``model`` a packed copy of its weights for prompt
    passes; returns how many were packed (0 where this CPU or build cannot, or where the packed
    product would change a bit)."""
    if not _available():
        return 0
    linears = [module for module in model.modules()
               if type(module) is torch.nn.Linear and module.weight.dtype == torch.bfloat16
               and module.weight.device.type == "cpu"]  # fmt: skip
    if not linears:
        return 0
    with torch.inference_mode():
        try:
            first = torch.ops.mkldnn._reorder_linear_weight(linears[0].weight)
        except RuntimeError as error:
            log.info("prompt passes keep plain weights: oneDNN cannot pack them here (%s)", error)
            return 0
        if not _same_bits(linears[0].weight, first):
            log.info("prompt passes keep plain weights: packed products differ in the last bits on this CPU")
            return 0
        for module in linears:
            packed = first if module is linears[0] else torch.ops.mkldnn._reorder_linear_weight(module.weight)
            module.forward = _packed_linear(module, packed)  # type: ignore[method-assign]
    return len(linears)
