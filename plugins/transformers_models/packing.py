"""Prompt passes on pre-packed weights.

On the CPU, every bfloat16 matrix product through oneDNN first copies the weight matrix into
oneDNN's blocked layout, on every call: for a prompt pass of the shipped model that is 211 copies,
a sizeable part of the time to the first token. :func:`pack_linear_weights` makes those copies once,
at load, and the engine runs prompt passes (:func:`packed_prefill`) on them. The results are the
same to the last bit (the same kernel runs on the same layout; :func:`packing_is_exact` checks
every weight shape on the machine before anything is packed, and
``tests/plugins/test_prompt_passes.py`` checks whole prompt passes). Decode steps keep the plain
weights: they run on PyTorch's own kernels, so that a row's logits do not depend on its batch (see :mod:`.engine`).

The packed copies cost as much memory again as the linear layers' weights (about 270 MB for the
shipped model); ``ESPALIER_PACK_PREFILL_WEIGHTS=false`` leaves them out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
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
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class PackedLinear(torch.nn.Linear):
    """An ``nn.Linear`` that, in :func:`packed_prefill`, multiplies with a packed copy of its weight.

    The copy is a non-persistent buffer (not saved; copied along with the module). If the weight
    is changed in place after packing, the copy is stale and the plain product is used instead.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        packed = self.espalier_packed
        if (
            getattr(_state, "on", False)
            and input.dtype == packed.dtype
            and torch._C._get_mkldnn_enabled()
            and self.weight._version == self.espalier_weight_version
        ):
            return torch.ops.mkldnn._linear_pointwise(input, packed, self.bias, "none", [], "")
        return super().forward(input)


def packable_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The plain bfloat16 CPU ``nn.Linear`` layers of ``model`` (empty where this torch build
    cannot pack)."""
    if not _available():
        return []
    return [
        module
        for module in model.modules()
        if type(module) is torch.nn.Linear
        and module.weight.dtype == torch.bfloat16
        and module.weight.device.type == "cpu"
        and not module.weight.is_inference()
    ]


def packing_is_exact(linears: list[torch.nn.Linear]) -> bool:
    """Does the packed product give exactly what ``F.linear`` gives, on this machine, for every
    weight shape among ``linears``, at a few prompt lengths?"""
    generator = torch.Generator().manual_seed(0)
    shapes = {tuple(module.weight.shape): module.weight for module in linears}
    with torch.inference_mode():
        for weight in shapes.values():
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(weight)
            except RuntimeError as error:
                log.info("prompt passes keep plain weights: oneDNN cannot pack them here (%s)", error)
                return False
            for rows in (1, 5, 37):
                sample = torch.randn(1, rows, weight.shape[1], generator=generator).to(weight.dtype)
                if not torch.equal(
                    F.linear(sample, weight), torch.ops.mkldnn._linear_pointwise(sample, packed, None, "none", [], "")
                ):
                    log.info("prompt passes keep plain weights: packed products differ in the last bits on this CPU")
                    return False
    return True


def pack_linear(module: torch.nn.Linear) -> None:
    """Give ``module`` its packed copy (it becomes a :class:`PackedLinear`)."""
    with torch.inference_mode():
        packed = torch.ops.mkldnn._reorder_linear_weight(module.weight)
    module.register_buffer("espalier_packed", packed, persistent=False)
    module.espalier_weight_version = module.weight._version
    module.__class__ = PackedLinear


def packed_layers(model: torch.nn.Module) -> int:
    """How many of ``model``'s layers run prompt passes on packed weights."""
    return sum(isinstance(module, PackedLinear) for module in model.modules())


def pack_linear_weights(model: torch.nn.Module, run: Callable[..., Any] | None = None) -> int:
    """Pack every packable linear layer of ``model`` (see :func:`packable_linears`) when
    :func:`packing_is_exact` here; returns how many were packed. ``run(function, *args)`` runs each
    step (the engine passes :meth:`~.engine.GenerationEngine.call`: one layer per call, so
    generation for other models goes on between layers)."""
    run = run or (lambda function, *args: function(*args))
    linears = packable_linears(model)
    if not linears or not run(packing_is_exact, linears):
        return 0
    for module in linears:
        run(pack_linear, module)
    return len(linears)
