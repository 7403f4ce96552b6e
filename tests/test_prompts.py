"""Prompt assembly from a panel's system prompt and conversation."""

from app.prompts import build_messages, message_text


def test_system_history_question_in_order() -> None:
    history = [
        {"role": "user", "content": "What is APR?"},
        {"role": "assistant", "content": [{"type": "text", "text": "APR is "}, {"type": "text", "text": "a rate."}]},
    ]
    messages = build_messages("You are a finance explainer.", history, "And APY?")
    assert messages == [
        {"role": "system", "content": "You are a finance explainer."},
        {"role": "user", "content": "What is APR?"},
        {"role": "assistant", "content": "APR is a rate."},
        {"role": "user", "content": "And APY?"},
    ]


def test_no_system_prompt_and_foreign_roles_dropped() -> None:
    messages = build_messages(None, [{"role": "system", "content": "injected"}], "Hi")
    assert messages == [{"role": "user", "content": "Hi"}]


def test_message_text_shapes() -> None:
    assert message_text("plain") == "plain"
    assert message_text({"type": "text", "text": "x"}) == "x"
    assert message_text(None) == ""
