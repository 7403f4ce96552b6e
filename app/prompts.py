"""Prompt assembly: turn a panel's system prompt, its conversation so far and the new question into chat messages.

The server applies the model's own chat template to these messages (OpenAI chat completions API), so nothing here
knows about ChatML or special tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Message = dict[str, str]


def message_text(content: Any) -> str:
    """Plain text of a chat message's content: a string, or Gradio's list of typed parts ({"type": "text", ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, Sequence):
        return "".join(message_text(part) for part in content)
    return ""


def build_messages(system_prompt: str | None, history: Sequence[dict[str, Any]], question: str) -> list[Message]:
    """System prompt (if any), then the earlier user/assistant turns, then the new user question."""
    messages: list[Message] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [
        {"role": turn["role"], "content": message_text(turn["content"])}
        for turn in history
        if turn.get("role") in ("user", "assistant")
    ]
    messages.append({"role": "user", "content": question})
    return messages
