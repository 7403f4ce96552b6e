"""Which rows of a vLLM step use which LoRA adapter slot: the grouping the CPU LoRA ops (app/serving/cpu_lora.py)
run their products over, made once per step from vLLM's per-token slot indices and which tokens are a prompt's.

A contiguous run of one slot's tokens is a slice (a view, no copy), several runs one row-index tensor; tokens with
index -1 (no adapter) are in no group. Decode tokens and prompt tokens are grouped apart (they take products of
different shapes), and the decode tokens of slots that have exactly one each (several panels decoding at once) are
gathered for one batched product.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class Group:
    """The rows of one step that use adapter slot `slot`: a slice (one contiguous run) or row indices."""

    slot: int
    rows: slice | torch.Tensor


@dataclass(frozen=True)
class Singles:
    """Adapter slots `slots` (a contiguous range) that have one token each in a step, done as one batched product.

    rows[i] is the token of slot `slots.start + i`; a slot of the range without a token gets a stand-in row whose
    result is dropped: `present` lists the positions that have one (None when all have), `targets` their rows.
    """

    slots: slice
    rows: torch.Tensor
    present: torch.Tensor | None
    targets: torch.Tensor


@dataclass(frozen=True)
class Step:
    """A step's tokens by adapter slot (-1 tokens are in no group): `prompts` has the prompt tokens of each slot,
    `groups` its decode tokens; `singles`, when two or more slots have exactly one decode token (several panels
    decoding at once), batches those, and `rest` is the decode groups it leaves out."""

    groups: list[Group]
    singles: Singles | None = None
    rest: list[Group] = field(default_factory=list)
    prompts: list[Group] = field(default_factory=list)

    @property
    def idle(self) -> bool:
        """No token of the step uses an adapter."""
        return not self.groups and not self.prompts


def lora_groups(indices: torch.Tensor) -> list[Group]:
    """Group a step's per-token slot indices (-1 = no adapter) by slot; -1 rows are in no group."""
    values, counts = torch.unique_consecutive(indices, return_counts=True)
    runs: dict[int, list[tuple[int, int]]] = {}
    start = 0
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        if value >= 0:
            runs.setdefault(value, []).append((start, start + count))
        start += count
    groups = []
    for slot, spans in runs.items():
        if len(spans) == 1:
            groups.append(Group(slot, slice(*spans[0])))
        else:
            rows = torch.cat([torch.arange(begin, end, device=indices.device) for begin, end in spans])
            groups.append(Group(slot, rows))
    return groups


def prompt_mask(computed: np.ndarray, prompt_lengths: np.ndarray, scheduled: np.ndarray) -> torch.Tensor | None:
    """Per token of a step, whether it is a prompt token: its request (one entry per request, in the step's order)
    has computed fewer tokens than its prompt has (`computed` < `prompt_lengths`; `scheduled` tokens each in the
    step). The same test vLLM's model runner makes (`num_computed_tokens_cpu` against `num_prompt_tokens`). None when
    no token is one. A prompt's last token alone in its step (the rest found in the prefix cache, or a one-token
    chunk) is still a prompt token, so re-asking a prompt rounds its tokens the same way."""
    prompt = np.asarray(computed) < np.asarray(prompt_lengths)
    if not prompt.any():
        return None
    return torch.from_numpy(np.repeat(prompt, scheduled))


def lora_step(indices: torch.Tensor, prompt: torch.Tensor | None = None) -> Step:
    """`lora_groups` of the prompt tokens (`prompt`: a mask, see `prompt_mask`) and of the decode tokens, the
    decode tokens' one-token slots batched together when there are two or more of them."""
    prompts = []
    if prompt is not None:
        prompts = lora_groups(indices.masked_fill(~prompt, -1))
        indices = indices.masked_fill(prompt, -1)
    groups = lora_groups(indices)
    single = {g.slot: g.rows.start for g in groups if isinstance(g.rows, slice) and g.rows.stop - g.rows.start == 1}
    if len(single) < 2:
        return Step(groups, prompts=prompts)
    low, high = min(single), max(single) + 1
    stand_in = next(iter(single.values()))
    rows = torch.tensor([single.get(slot, stand_in) for slot in range(low, high)], device=indices.device)
    present = None
    if len(single) < high - low:
        present = torch.tensor([n for n, slot in enumerate(range(low, high)) if slot in single], device=indices.device)
    targets = rows if present is None else rows.index_select(0, present)
    rest = [g for g in groups if g.slot not in single]
    return Step(groups, Singles(slice(low, high), rows, present, targets), rest, prompts)
