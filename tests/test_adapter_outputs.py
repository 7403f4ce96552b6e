"""Greedy outputs of the shipped adapters through our vLLM server equal PEFT's own, alone and batched.

The reference is PEFT on transformers: the converted base model (bf16 weights, computed in float32) with each
shipped adapter. vLLM computes in bfloat16, so at a step where PEFT's two best tokens are nearly tied, vLLM may
rightly pick the other one, and a free-running comparison then compares two different continuations (measured:
with vLLM's own ops, 10 of 16 adapter answers had such a step within 24 tokens, every one a gap under 0.13
logits; the base model's 4 had none). So the check is teacher-forced: PEFT scores vLLM's own tokens in one
forward pass, and at every one of the TOKENS steps vLLM's token must be PEFT's greedy choice, or within NEAR_TIE
logits of it (bf16 carries ~3 significant digits through 30 layers); and at least EXACT_SHARE of all steps must be
PEFT's choice exactly. The check discriminates: the base model's tokens fail it when scored as any adapter.

The same holds for requests of the base model and of every adapter sent at once (batches that mix index -1
tokens with several adapter slots), the case the CPU LoRA ops once got wrong. And each output alone is exactly the
same when asked again alone in another order (no tolerance): an eval run's answers must not depend on its order.
Runs on the session's vLLM server (tests/conftest.py), with the shipped adapters loaded at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from app.adapters.validate import discover_adapters
from app.serving.client import ServingError
from app.serving.process import VLLMServer

REPO = Path(__file__).resolve().parent.parent
TOKENS = 24
NEAR_TIE = 0.25  # logits
EXACT_SHARE = 0.9
PROMPTS = [
    "What is a tort?",
    "What does a high blood pressure reading mean?",
    "How does compound interest work?",
    "My phone has no signal. What can I do?",
]
SHIPPED = discover_adapters(REPO / "adapters")
PREFIX = "outputs-"  # served names of the shipped adapters in this module


def prompt_ids(tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@dataclass
class Peft:
    """PEFT's model with every shipped adapter; `gaps` scores a continuation."""

    model: PeftModel

    @torch.inference_mode()
    def gaps(self, name: str, prompt: list[int], tokens: list[int]) -> list[float]:
        """Per step, how far `tokens[i]` is below the best next-token logit of model `name` ("base": no adapter)."""
        ids = torch.tensor([prompt + tokens])
        if name == "base":
            with self.model.disable_adapter():
                logits = self.model(input_ids=ids).logits[0]
        else:
            self.model.set_adapter(name)
            logits = self.model(input_ids=ids).logits[0]
        steps = logits[len(prompt) - 1 : len(prompt) - 1 + len(tokens)].float()
        chosen = steps.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1)
        return (steps.max(dim=1).values - chosen).tolist()


@pytest.fixture(scope="module")
def peft(model_dir: Path) -> Peft:
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    names = sorted(SHIPPED)
    model = PeftModel.from_pretrained(base, SHIPPED[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(SHIPPED[name], adapter_name=name)
    return Peft(model.eval())


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
async def served(vllm_server: VLLMServer) -> AsyncIterator[openai.AsyncOpenAI]:
    """The session's server with the shipped adapters loaded as outputs-<name>; an OpenAI client for it."""
    client = vllm_server.client()
    try:
        for name, path in SHIPPED.items():
            await client.load_adapter(PREFIX + name, str(path))
        async with openai.AsyncOpenAI(base_url=vllm_server.base_url, api_key=vllm_server.api_key) as raw:
            yield raw
    finally:
        for name in SHIPPED:
            with contextlib.suppress(ServingError):
                await client.unload_adapter(PREFIX + name)


async def vllm_tokens(client: openai.AsyncOpenAI, model: str, ids: list[int]) -> list[int]:
    done = await client.completions.create(
        model=model if model == "base" else PREFIX + model,
        prompt=ids,
        max_tokens=TOKENS,
        temperature=0.0,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    token_ids = getattr(done.choices[0], "token_ids", None)
    assert token_ids is not None, "vLLM did not return token ids"
    return list(token_ids)


def check(peft: Peft, prompts: dict[str, list[int]], outputs: dict[tuple[str, str], list[int]]) -> None:
    exact = total = 0
    worst_gap = 0.0
    for (name, question), got in outputs.items():
        assert len(got) == TOKENS, f"{name}, {question!r}: {len(got)} tokens from vLLM"
        gaps = peft.gaps(name, prompts[question], got)
        worst = max(range(TOKENS), key=lambda step: gaps[step])
        assert gaps[worst] <= NEAR_TIE, (
            f"{name}, {question!r}: vLLM's token at step {worst} is {gaps[worst]:.3f} logits below PEFT's choice "
            f"(not a near tie); vLLM's tokens: {got}"
        )
        exact += sum(gap == 0.0 for gap in gaps)
        total += TOKENS
        worst_gap = max(worst_gap, gaps[worst])
    print(f"{exact} of {total} steps are PEFT's greedy choice exactly; the worst is {worst_gap:.3f} logits below it")
    assert exact >= EXACT_SHARE * total, f"only {exact} of {total} steps are PEFT's greedy choice exactly"


async def answers(
    client: openai.AsyncOpenAI, prompts: dict[str, list[int]], keys: list[tuple[str, str]], at_once: bool
) -> dict[tuple[str, str], list[int]]:
    if at_once:
        got = await asyncio.gather(*(vllm_tokens(client, name, prompts[q]) for name, q in keys))
    else:
        got = [await vllm_tokens(client, name, prompts[q]) for name, q in keys]
    return dict(zip(keys, got, strict=True))


def all_keys() -> list[tuple[str, str]]:
    return [(name, question) for question in PROMPTS for name in ["base", *sorted(SHIPPED)]]


@pytest.fixture(scope="module")
def prompts(tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    return {question: prompt_ids(tokenizer, question) for question in PROMPTS}


@pytest.fixture(scope="module")
async def alone(served: openai.AsyncOpenAI, prompts: dict[str, list[int]]) -> dict[tuple[str, str], list[int]]:
    """Every model on every prompt, one request at a time."""
    return await answers(served, prompts, all_keys(), at_once=False)


@pytest.fixture(scope="module")
async def together(served: openai.AsyncOpenAI, prompts: dict[str, list[int]]) -> dict[tuple[str, str], list[int]]:
    """All models on all prompts at once: batches mix base (-1) tokens with every adapter slot."""
    return await answers(served, prompts, all_keys(), at_once=True)


def test_each_adapter_alone_matches_peft(
    alone: dict[tuple[str, str], list[int]], peft: Peft, prompts: dict[str, list[int]]
) -> None:
    assert len(SHIPPED) >= 4, "the shipped adapters are missing"
    for question in PROMPTS:
        assert len({tuple(alone[name, question]) for name in SHIPPED}) > 1, "adapters must change the output"
    check(peft, prompts, alone)
    for name in SHIPPED:  # the check tells the adapter from the base model (else it proves nothing)
        with pytest.raises(AssertionError):
            check(peft, prompts, {(name, q): alone["base", q] for q in PROMPTS})


def test_base_and_adapters_batched_together_each_get_their_own_output(
    together: dict[tuple[str, str], list[int]], peft: Peft, prompts: dict[str, list[int]]
) -> None:
    check(peft, prompts, together)


async def test_an_answer_alone_repeats_exactly_in_any_order(
    served: openai.AsyncOpenAI,
    prompts: dict[str, list[int]],
    alone: dict[tuple[str, str], list[int]],
    together: dict[tuple[str, str], list[int]],
) -> None:
    """Greedy tokens of a request sent alone are the same, exactly, when every request is sent again alone in the
    reverse order: an eval at `--concurrency 1` repeats its figures, on any CPU.

    Batched, a near-tie token may come out the other way: our LoRA ops are batch-invariant (tests/test_lora_ops.py,
    bit for bit), but on some CPUs vLLM's oneDNN matmuls for the base model round a row differently with other rows
    beside it (measured on an AMD EPYC with AVX512-BF16 for the 1536 -> 576 down projection; 4 of these 20 outputs,
    all adapters, whose answers have near ties; on the machine of earlier runs, none). The batched outputs still
    pass the PEFT check above; how many differ here is printed."""
    again = await answers(served, prompts, all_keys()[::-1], at_once=False)
    changed = [key for key in alone if alone[key] != again[key]]
    assert not changed, f"{len(changed)} of {len(alone)} outputs changed when asked again alone, e.g. {changed[:3]}"
    batched = [key for key in alone if alone[key] != together[key]]
    print(f"{len(batched)} of {len(alone)} outputs differ batched vs alone on this machine: {batched}")
