"""The grouped CPU LoRA ops (app/serving/cpu_lora.py) against vLLM's own PyTorch ops, on random weights.

The reference is `PunicaWrapperCPU.add_lora_linear` (vllm.lora.ops.torch_ops) with the plugin's index -1 fix; the
grouped wrapper must give the same output for mixed batches (base tokens, adapters in one or several runs, several
slices). In float32 the two differ only by summation order (tolerance 1e-5). In bfloat16, vLLM's ops round the
shrunk rows to bfloat16 before the expand and ours keep them in float32, so the deltas differ by that rounding
(2**-9 relative, per rank element) and then by a rounding step of the output: tolerance 2e-2 on values of a few
units.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.ops.torch_ops import lora_ops
from vllm.lora.punica_wrapper import punica_cpu
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from app.serving import vllm_plugin
from app.serving.cpu_lora import PROMPT_BLOCK, GroupedPunicaWrapperCPU, row_products
from app.serving.lora_grouping import lora_groups, prompt_mask

MAX_LORAS, RANK, HIDDEN = 4, 8, 48
SLOT_IDS = [11, 12, 13, 14]  # LoRA ids in slots 0..3; id 0 = no adapter (index -1)
CASES = {
    "one adapter": [12] * 5,
    "base only": [0] * 4,
    "base and adapters in runs": [0, 0, 11, 11, 11, 0, 13, 14, 14],
    "one adapter in separate runs": [12, 0, 12, 12, 0, 0, 12, 11],
    "decode, four adapters": [14, 11, 13, 12],
    "decode, two adapters apart and a base token": [11, 0, 13],
    "one-token adapters beside a run": [14, 12, 12, 12, 0, 11],
    "a single token": [13],
}


@pytest.fixture(autouse=True)
def _fixed_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference runs vLLM's ops with the plugin's -1 fix (without it, -1 tokens get the last slot)."""
    for name in vllm_plugin.PATCHED_OPS:
        original = getattr(lora_ops, name)
        fixed = vllm_plugin.without_lora_rows(getattr(original, "__wrapped__", original))
        monkeypatch.setattr(lora_ops, name, fixed)  # where vLLM's sgmv ops look them up
        monkeypatch.setattr(punica_cpu, name, fixed)  # and the CPU wrapper's own imports


def wrappers(ids: list[int]) -> tuple[PunicaWrapperCPU, GroupedPunicaWrapperCPU]:
    mapping = LoRAMapping(index_mapping=tuple(ids), prompt_mapping=tuple(ids), is_prefill=True)
    made = (PunicaWrapperCPU(64, 16, "cpu"), GroupedPunicaWrapperCPU(64, 16, "cpu"))
    for wrapper in made:
        wrapper.update_metadata(mapping, list(SLOT_IDS), MAX_LORAS, 1000)
    return made


def stacked(
    output_slices: tuple[int, ...],
    dtype: torch.dtype,
    rng: torch.Generator,
    *,
    rank: int = RANK,
    hidden: int = HIDDEN,
    b_scale: float = 0.1,
) -> tuple[tuple, tuple]:
    """Random stacked weights as vLLM stores them: A (slots, 1, rank, in), B (slots, 1, out, rank)."""
    a = tuple(torch.randn(MAX_LORAS, 1, rank, hidden, generator=rng).to(dtype) for _ in output_slices)
    b = tuple(torch.randn(MAX_LORAS, 1, size, rank, generator=rng).to(dtype) * b_scale for size in output_slices)
    return a, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("output_slices", [(40,), (48, 16, 16), (64, 64)])
@pytest.mark.parametrize("case", CASES)
def test_grouped_ops_match_vllms(case: str, output_slices: tuple[int, ...], dtype: torch.dtype) -> None:
    ids = CASES[case]
    rng = torch.Generator().manual_seed(len(ids) * 7 + len(output_slices))
    lora_a, lora_b = stacked(output_slices, dtype, rng)
    x = torch.randn(len(ids), HIDDEN, generator=rng).to(dtype)
    base = torch.randn(len(ids), sum(output_slices), generator=rng).to(dtype)
    reference, grouped = wrappers(ids)
    want, got = base.clone(), base.clone()
    reference.add_lora_linear(want, x, lora_a, lora_b, 1.0, output_slices)
    grouped.add_lora_linear(got, x, lora_a, lora_b, 1.0, output_slices)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance, msg=f"{case}: grouped != vLLM's ops")
    base_rows = [n for n, lora_id in enumerate(ids) if lora_id == 0]
    assert torch.equal(got[base_rows], base[base_rows]), "tokens without an adapter must get exactly no delta"
    if len(base_rows) < len(ids):
        assert not torch.equal(got, base), "adapter tokens must change (else this test proves nothing)"


@pytest.mark.parametrize("tokens", [3, 8, 33])
def test_a_tokens_shrink_does_not_depend_on_its_batch(tokens: int) -> None:
    """Bit for bit, at a served shape (SmolLM2-135M's fused q, k, v A matrices: 3 x rank 16 from hidden 576): a
    token's float32 shrink is the same alone and beside `tokens - 1` more tokens of its adapter. A float32 GEMM
    (`torch.mm`) breaks this; through 30 layers that changed greedy answers with the batch."""
    rng = torch.Generator().manual_seed(tokens)
    a = torch.randn(576, 48, generator=rng).to(torch.bfloat16).to(torch.float32)
    x = torch.randn(tokens, 576, generator=rng).to(torch.bfloat16)
    x = x.float()
    alone = torch.cat([row_products(x[row : row + 1], a) for row in range(tokens)])
    assert torch.equal(row_products(x, a), alone), "a token's shrink changed with the number of tokens beside it"
    torch.testing.assert_close(alone, x @ a, atol=1e-4, rtol=1e-4)


SERVED_SLICES = (576, 192, 192)  # SmolLM2-135M's fused q, k, v outputs, from hidden 576


def served_outputs(
    ids: list[int], x: torch.Tensor, weights: tuple[tuple, tuple], prompt: list[bool] | None = None
) -> torch.Tensor:
    """The grouped wrapper's LoRA output for one step of tokens with adapters `ids` (0: none), decode tokens or, per
    token, whether it is a prompt's (`prompt`, as the plugin marks them)."""
    grouped = GroupedPunicaWrapperCPU(512, 16, "cpu")
    mapping = LoRAMapping(index_mapping=tuple(ids), prompt_mapping=tuple(ids), is_prefill=True)
    grouped.update_metadata(mapping, list(SLOT_IDS), MAX_LORAS, 1000)
    grouped.mark_prompt_tokens(None if prompt is None else torch.tensor(prompt))
    y = torch.zeros(len(ids), sum(SERVED_SLICES), dtype=torch.bfloat16)
    grouped.add_lora_linear(y, x, *weights, 1.0, SERVED_SLICES)
    prompts = any(lora_id and marked for lora_id, marked in zip(ids, prompt or [], strict=False))
    assert bool(grouped.step.prompts) == prompts, "adapter tokens of prompts take the block path"
    return y


def test_a_tokens_delta_is_the_same_bits_in_any_batch() -> None:
    """At SmolLM2-135M's fused q, k, v shape in bfloat16: each decode token's LoRA output alone, beside one token of
    each other adapter (the batched one-token path: panels decoding at once), beside more tokens of its own
    adapter, and in mixed steps, bit for bit. Anything else lets a request's greedy answer change with its batch."""
    rng = torch.Generator().manual_seed(17)
    weights = stacked(SERVED_SLICES, torch.bfloat16, rng, rank=16, hidden=576, b_scale=0.05)
    batches = {  # (tokens a step, the adapters of the steps' tokens; 0: no adapter): a few hundred tokens each,
        # as a difference shows in about one token's output in fifty
        "one token of each adapter": (4, [11, 12, 13, 14] * 64),
        "two adapters apart": (2, [14, 12] * 64),
        "its adapter's tokens": (256, [12] * 256),
        "mixed steps": (16, [0, 11, 11, 12, 13, 0, 14, 14, 12, 12, 11, 12, 13, 13, 13, 14] * 8),
    }
    assert wrappers([11, 12, 13, 14])[1].step.singles is not None, "four one-token adapters take the batched path"
    for name, (step, ids) in batches.items():
        x = torch.randn(len(ids), 576, generator=rng).to(torch.bfloat16)
        together = torch.cat(
            [served_outputs(ids[n : n + step], x[n : n + step], weights) for n in range(0, len(ids), step)]
        )
        alone = torch.cat([served_outputs([lora_id], x[n : n + 1], weights) for n, lora_id in enumerate(ids)])
        assert alone.abs().sum() > 0
        differ = (together != alone).any(dim=1).sum().item()
        assert differ == 0, f"{name}: {differ} of {len(ids)} tokens' outputs differ from their outputs alone"


def test_a_prompts_delta_is_the_same_bits_in_any_step() -> None:
    """Prompt tokens go through products of PROMPT_BLOCK rows: each request's LoRA output is the same bits alone and
    in a step with other prompts of its adapter (which move its rows to other places in the blocks), other
    adapters' prompts, one-token prompts (the rest in the prefix cache), decode tokens and base tokens; and it is
    the one-row products' result up to float32 summation order."""
    rng = torch.Generator().manual_seed(23)
    weights = stacked(SERVED_SLICES, torch.bfloat16, rng, rank=16, hidden=576, b_scale=0.05)
    requests = [  # (adapter, tokens in the step, a prompt's?)
        (12, 37, True), (11, 1, False), (12, 50, True), (12, 1, True), (13, 5, True), (0, 10, True), (12, 2, True),
        (14, 1, False), (12, PROMPT_BLOCK + 3, True), (11, 1, True),
    ]  # fmt: skip
    ids = [lora_id for lora_id, tokens, _ in requests for _ in range(tokens)]
    prompt = [marked for _, tokens, marked in requests for _ in range(tokens)]
    x = torch.randn(len(ids), 576, generator=rng).to(torch.bfloat16)
    together = served_outputs(ids, x, weights, prompt)
    starts = [0, *itertools.accumulate(tokens for _, tokens, _ in requests)]
    alone = torch.cat(
        [
            served_outputs([lora_id] * tokens, x[start : start + tokens], weights, [marked] * tokens)
            for (lora_id, tokens, marked), start in zip(requests, starts, strict=False)
        ]
    )
    differ = (together != alone).any(dim=1).sum().item()
    assert differ == 0, f"{differ} of {len(ids)} tokens' outputs differ from their request's outputs alone"
    one_row = served_outputs(ids, x, weights)
    torch.testing.assert_close(together, one_row, atol=2e-2, rtol=2e-2)


def test_a_re_asked_prompts_last_token_keeps_its_bits() -> None:
    """An identical prompt asked again finds all but its last token in vLLM's prefix cache, so that token is alone
    in its step: still a prompt token, it must get the bits it got in the whole prompt (as a decode token it would
    take the one-row products and may round differently, and the re-asked answer could take another path)."""
    rng = torch.Generator().manual_seed(29)
    weights = stacked(SERVED_SLICES, torch.bfloat16, rng, rank=16, hidden=576, b_scale=0.05)
    x = torch.randn(129, 576, generator=rng).to(torch.bfloat16)
    whole = served_outputs([12] * 129, x, weights, [True] * 129)
    last_alone = torch.cat([served_outputs([12], x[n : n + 1], weights, [True]) for n in range(129)])
    assert torch.equal(whole, last_alone)


def test_prompt_tokens_are_those_of_requests_still_in_their_prompt() -> None:
    """vLLM's test: a request is in its prompt while it has computed fewer tokens than the prompt has, whatever the
    number of its tokens in the step; the mask has one entry per token of the step."""
    computed, prompts, scheduled = np.array([5, 0, 10, 36]), np.array([5, 3, 12, 37]), np.array([1, 3, 2, 1])
    mask = prompt_mask(computed, prompts, scheduled)
    assert mask is not None and mask.tolist() == [False, True, True, True, True, True, True]
    assert prompt_mask(np.array([5, 12]), np.array([5, 12]), np.array([1, 1])) is None, "all decoding"


def test_the_plugin_marks_each_steps_prompt_tokens_before_vllm_sets_the_mapping() -> None:
    """The plugin's wrapper of the model runner's `set_active_loras` marks the step's prompt tokens on the grouped
    wrappers from the input batch, then calls vLLM's; a wrapper whose mask is for another token count (a dummy run)
    groups every token as a decode token."""
    grouped = GroupedPunicaWrapperCPU(64, 16, "cpu")
    calls = []

    def set_active(runner: object, batch: object, scheduled: np.ndarray, *rest: object) -> None:
        calls.append(grouped.prompt.tolist() if grouped.prompt is not None else None)
        mapping = LoRAMapping(index_mapping=(12, 12, 12, 11), prompt_mapping=(12, 11), is_prefill=True)
        grouped.update_metadata(mapping, list(SLOT_IDS), MAX_LORAS, 1000)

    marked = vllm_plugin.marking_prompt_tokens(set_active)
    batch = SimpleNamespace(num_computed_tokens_cpu=np.array([0, 9, 0]), num_prompt_tokens=np.array([3, 4, 8]))
    marked(None, batch, np.array([3, 1]))
    assert calls == [[True, True, True, False]], "marked before vLLM's call, for the step's requests only"
    assert [group.slot for group in grouped.step.prompts] == [1] and [g.slot for g in grouped.step.groups] == [0]
    grouped.update_metadata(LoRAMapping((12, 11), (12, 11), is_prefill=True), list(SLOT_IDS), MAX_LORAS, 1000)
    assert not grouped.step.prompts, "a mask for four tokens is not used for a step of two"


def test_scale_is_applied_like_vllms() -> None:
    rng = torch.Generator().manual_seed(3)
    lora_a, lora_b = stacked((32, 32), torch.float32, rng)
    ids = [11, 0, 13]
    x, base = torch.randn(3, HIDDEN, generator=rng), torch.zeros(3, 64)
    reference, grouped = wrappers(ids)
    grouped.add_lora_linear(base.clone(), x, lora_a, lora_b, 1.0, (32, 32))  # caches the weights folded with 1.0
    want, got = base.clone(), base.clone()
    reference.add_lora_linear(want, x, lora_a, lora_b, 0.5, (32, 32))
    grouped.add_lora_linear(got, x, lora_a, lora_b, 0.5, (32, 32))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_new_adapter_weights_are_picked_up() -> None:
    """vLLM writes an adapter into a slot in place (set_lora): the fused copy must follow, not go stale."""
    rng = torch.Generator().manual_seed(5)
    lora_a, lora_b = stacked((40,), torch.float32, rng)
    ids = [12, 12]
    x = torch.randn(2, HIDDEN, generator=rng)
    reference, grouped = wrappers(ids)
    first = torch.zeros(2, 40)
    grouped.add_lora_linear(first, x, lora_a, lora_b, 1.0, (40,))
    lora_a[0][1, 0].copy_(torch.randn(RANK, HIDDEN, generator=rng))  # what set_lora does to slot 1
    lora_b[0][1].zero_()
    lora_b[0][1, 0, :, :2] = 1.0
    want, got = torch.zeros(2, 40), torch.zeros(2, 40)
    reference.add_lora_linear(want, x, lora_a, lora_b, 1.0, (40,))
    grouped.add_lora_linear(got, x, lora_a, lora_b, 1.0, (40,))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, first), "the new weights must change the output"


@pytest.mark.parametrize(
    ("indices", "expected"),
    [
        ([3, 3, 3], [(3, slice(0, 3))]),
        ([-1, -1], []),
        ([-1, 0, 0, -1, 2], [(0, slice(1, 3)), (2, slice(4, 5))]),
        ([1, -1, 1, 1, 0], [(1, [0, 2, 3]), (0, slice(4, 5))]),
    ],
)
def test_groups_skip_base_tokens(indices: list[int], expected: list[tuple[int, object]]) -> None:
    groups = lora_groups(torch.tensor(indices))
    assert [g.slot for g in groups] == [slot for slot, _ in expected]
    for group, (_, rows) in zip(groups, expected, strict=True):
        if isinstance(rows, slice):
            assert group.rows == rows
        else:
            assert isinstance(group.rows, torch.Tensor) and group.rows.tolist() == rows


def test_plugin_selects_the_grouped_wrapper(monkeypatch: pytest.MonkeyPatch) -> None:
    """register() makes vLLM's CPU platform name our wrapper, and the name resolves, and has the model runner mark
    prompt tokens; `vllm` keeps vLLM's own wrapper."""
    from vllm.platforms.cpu import CpuPlatform
    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.v1.worker.lora_model_runner_mixin import LoRAModelRunnerMixin

    monkeypatch.setattr(CpuPlatform, "get_punica_wrapper", CpuPlatform.get_punica_wrapper)
    monkeypatch.setattr(LoRAModelRunnerMixin, "set_active_loras", LoRAModelRunnerMixin.set_active_loras)
    for name in vllm_plugin.PATCHED_OPS:
        monkeypatch.setattr(lora_ops, name, getattr(lora_ops, name))
        monkeypatch.setattr(punica_cpu, name, getattr(punica_cpu, name))
    monkeypatch.setenv(vllm_plugin.OPS_ENV, "vllm")
    vllm_plugin.register()
    assert CpuPlatform.get_punica_wrapper() == "vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU"
    monkeypatch.delenv(vllm_plugin.OPS_ENV)
    vllm_plugin.register()
    assert resolve_obj_by_qualname(CpuPlatform.get_punica_wrapper()) is GroupedPunicaWrapperCPU
    assert getattr(LoRAModelRunnerMixin.set_active_loras, "_arena_marking", False), "it marks prompt tokens"
    monkeypatch.setenv(vllm_plugin.OPS_ENV, "fast")
    with pytest.raises(ValueError, match="grouped"):
        vllm_plugin.register()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_grouped_embedding_and_logits_match_vllms(case: str, dtype: torch.dtype) -> None:
    """The embedding LoRA (expand only) and the LM head's LoRA, one slot left all zeros (an adapter without them)."""
    ids = CASES[case]
    rng = torch.Generator().manual_seed(len(ids))
    (lora_a,), (lora_b,) = stacked((56,), dtype, rng)
    lora_a[2].zero_()
    lora_b[2].zero_()
    x = torch.randn(len(ids), HIDDEN, generator=rng).to(dtype)
    shrunk = torch.randn(len(ids), RANK, generator=rng).to(dtype)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    reference, grouped = wrappers(ids)
    for name, call in {
        "embedding": lambda w, y: w.add_lora_embedding(y, shrunk, lora_b, add_inputs=True),
        "logits": lambda w, y: w.add_lora_logits(y, x, lora_a, lora_b, 1.0),
    }.items():
        base = torch.randn(len(ids), 56, generator=rng).to(dtype)
        want, got = base.clone(), base.clone()
        call(reference, want)
        call(grouped, got)
        torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance, msg=f"{case}, {name}")


def test_one_compiled_graph_follows_each_steps_grouping() -> None:
    """vLLM's CPU compile traces the model once and then skips guards: under torch.compile the grouped LoRA call must
    be an opaque op that reads the grouping of the step being run, so a second step with another mix of adapters
    (same token count) reuses the graph without recompiling and still gets its own adapters' deltas."""
    import torch._dynamo

    rng = torch.Generator().manual_seed(11)
    slices = (48, 16, 16)
    lora_a, lora_b = stacked(slices, torch.float32, rng)
    steps = [[0, 0, 11, 11, 11, 0, 13, 14, 14], [14, 12, 12, 0, 11, 11, 13, 13, 0]]
    grouped = wrappers(steps[0])[1]

    def layer(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        grouped.add_lora_linear(y, x, lora_a, lora_b, 1.0, slices)
        return y

    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    x = torch.randn(9, HIDDEN, generator=rng)
    for number, ids in enumerate(steps):
        reference = wrappers(ids)[0]
        grouped.update_metadata(
            LoRAMapping(index_mapping=tuple(ids), prompt_mapping=tuple(ids), is_prefill=True), list(SLOT_IDS), 4, 1000
        )
        want = torch.zeros(9, sum(slices))
        reference.add_lora_linear(want, x, lora_a, lora_b, 1.0, slices)
        with torch._dynamo.config.patch(error_on_recompile=number > 0):
            got = compiled(torch.zeros(9, sum(slices)), x)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"step {number}: compiled != vLLM's ops")


def test_compiling_hides_lora_from_the_cpu_check_only_for_the_call() -> None:
    """The opt-in hook: vLLM's CPU check runs as if LoRA were off (its rule: LoRA -> no compile), then LoRA is back."""
    seen = []
    config = type("Config", (), {"lora_config": "lora"})()
    vllm_plugin.compiling_with_lora(lambda cfg: seen.append(cfg.lora_config))(None, config)
    assert seen == [None]
    assert config.lora_config == "lora"
