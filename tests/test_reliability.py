"""Safe to share: the trust boundary, bounded input, secrets, arena integrity and concurrency, on the real app and
the scripted OpenAI-compatible server (the real-vLLM supervision tests are in tests/test_supervision.py). Each test
is named in docs/reliability.md next to the case it covers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from peft.utils import save_and_load

from app.arena.store import VoteStore
from app.auth import Access
from app.config import ConfigError, Settings, load_settings
from app.content import load_personas
from app.rag import RAGStore
from app.scoring.claims import unsupported_claims
from app.services import Services
from app.serving.client import ServingClient
from app.ui import build_blocks, launch
from app.ui.arena_tab import HIDDEN_ERROR
from app.ui.panel import checked_prompt
from tests.conftest import REPO, launched
from tests.fake_openai import FakeOpenAI
from tests.panels import panel
from tests.ports import free_port

PANEL = panel()


def ask(client: Client, question: str, count: int = 2) -> tuple[Any, ...]:
    return client.predict(question, "support", count, *PANEL * 4, api_name="/answer_all")


def tweaked(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """`settings` with some keys of some sections changed, e.g. tweaked(s, ui={"max_prompt_chars": 10})."""
    updates = {name: getattr(settings, name).model_copy(update=values) for name, values in sections.items()}
    return settings.model_copy(update=updates)


@contextmanager
def app_on(fake: FakeOpenAI, settings: Settings, tmp_path: Path) -> Iterator[str]:
    with VoteStore.in_folder(tmp_path / "votes") as store:
        services = Services.build(settings, ServingClient(fake.base_url, timeout_s=10), store=store)
        with launched(build_blocks(services)) as url:
            yield url


# --- the trust boundary -----------------------------------------------------------------------------------------------


def test_login_and_the_admin_role(
    fake_server: FakeOpenAI, server_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARENA_AUTH__USERS", "alice:wonderland,bob:builder")
    monkeypatch.setenv("ARENA_AUTH__ADMINS", "alice")
    port = free_port()
    settings = tweaked(load_settings(None, {"paths.data": str(tmp_path), "model.path": server_settings.model.path}),
                       ui={"port": port})  # fmt: skip
    demo = build_blocks(Services.build(settings, ServingClient(fake_server.base_url, timeout_s=10)))
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        assert httpx.get(f"{url}config").status_code == 401, "nothing is served before signing in"
        with pytest.raises(Exception):  # noqa: B017 - gradio_client raises its own, version-dependent error
            Client(url, auth=("bob", "wrong"), verbose=False)
        bob = Client(url, auth=("bob", "builder"), verbose=False)
        message, *_ = bob.predict(api_name="/adapters_refresh")
        assert "Only admins may do this" in message, "a signed-in user who is not an admin is refused"
        message, *_ = bob.predict(str(REPO / "adapters" / "legal"), "legal2", api_name="/adapters_load")
        assert "Only admins may do this" in message and "legal2" not in fake_server.adapters
        with pytest.raises(AppError, match="Only admins"):
            bob.predict(["support"], ["base"], 1, 32, "terminology_accuracy", api_name="/eval_run")
        alice = Client(url, auth=("alice", "wonderland"), verbose=False)
        message, table, *_ = alice.predict(api_name="/adapters_refresh")
        assert message == "" and [row[0] for row in table["data"]] == ["base", "support"], "an admin sees the tab"
        assert ask(bob, "Hello")[0][-1]["content"][0]["text"] == "OK.", "every signed-in user may compare"
    finally:
        demo.close()


def test_admin_actions_are_off_on_the_network_without_accounts(
    fake_server: FakeOpenAI, server_settings: Settings, tmp_path: Path
) -> None:
    exposed = tweaked(server_settings, ui={"host": "0.0.0.0"})  # what the app believes: not loopback
    assert not Access.from_settings(exposed).may_administer(None)
    with app_on(fake_server, exposed, tmp_path) as url:
        client = Client(url, verbose=False)
        message, *_ = client.predict(str(REPO / "adapters" / "legal"), "legal2", api_name="/adapters_load")
        assert "Admin actions are off because the app listens on the network" in message
        assert "legal2" not in fake_server.adapters
        with pytest.raises(AppError, match="Admin actions are off"):
            client.predict(["support"], ["base"], 1, 32, "terminology_accuracy", api_name="/eval_run")
        assert ask(client, "Hello")[0][-1]["content"][0]["text"] == "OK.", "comparing stays open to everyone"


def test_accounts_and_keys_come_only_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for text in ("auth:\n  users: alice:pw\n", "vllm:\n  api_key: sk-123\n"):
        config = tmp_path / "config.yaml"
        config.write_text(text)
        with pytest.raises(ConfigError, match="is a secret: set ARENA_") as info:
            load_settings(config)
        assert "pw" not in str(info.value) and "sk-123" not in str(info.value), "the secret is never echoed"
    monkeypatch.setenv("ARENA_AUTH__USERS", "alice:s3cret,bob")
    with pytest.raises(ConfigError, match="entry 2: expected name:password") as info:
        Access.from_settings(load_settings())
    assert "s3cret" not in str(info.value)
    monkeypatch.setenv("ARENA_AUTH__USERS", "alice:s3cret")
    monkeypatch.setenv("ARENA_AUTH__ADMINS", "carol")
    with pytest.raises(ConfigError, match="admins names users without an account: carol"):
        Access.from_settings(load_settings())
    assert "s3cret" not in repr(load_settings()), "settings never show a password"


async def test_no_other_services_key_is_sent(fake_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-meant-for-openai")
    client = ServingClient(fake_server.base_url)
    [delta async for delta in client.stream_chat("base", [{"role": "user", "content": "hi"}])]
    assert fake_server.headers[-1]["authorization"] == "Bearer EMPTY", "OPENAI_API_KEY must not reach our server"


# --- bounded input ----------------------------------------------------------------------------------------------------


def test_prompts_over_the_cap_are_refused_server_side(
    fake_server: FakeOpenAI, server_settings: Settings, tmp_path: Path
) -> None:
    with app_on(fake_server, tweaked(server_settings, ui={"max_prompt_chars": 50}), tmp_path) as url:
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match=r"Your question is 60 characters; the limit is 50"):
            ask(client, "x" * 60)
        with pytest.raises(AppError, match=r"Your prompt is 60 characters; the limit is 50"):
            client.predict("x" * 60, "support", ["base", "base+persona"], 0.0, 32, api_name="/arena_round")
        assert not fake_server.requests, "nothing over the cap reaches the model server"
        assert ask(client, "x" * 50)[0], "at the cap it is answered"


def test_history_is_trimmed_to_the_context(fake_server: FakeOpenAI, server_settings: Settings, tmp_path: Path) -> None:
    fake_server.context = 300  # tokens; the scripted /tokenize counts ~4 characters a token
    with app_on(fake_server, server_settings, tmp_path) as url:
        client = Client(url, verbose=False)
        for number in range(3):
            ask(client, f"question {number} " + "words " * 100)  # ~150 tokens each
        outputs = ask(client, "And now?")
        sent = fake_server.requests[-1]["messages"]
        assert len(sent) < 7, "the oldest turns were left out"
        assert sent[-1] == {"role": "user", "content": "And now?"}
        assert "earlier turn(s) left out to fit the model's context" in outputs[4], "and the panel says so"
        assert len(outputs[0]) == 8, "the chat itself still shows the whole conversation"


def test_claim_check_is_linear_in_the_evidence() -> None:
    """A megabyte of evidence full of names and numbers: quadratic work here would take hours."""
    evidence = ["Acme Basic costs $25. The Travel Pass is $10 a day. " * 20_000]
    assert unsupported_claims("Acme Basic costs $25 and Acme Ultra $99.", evidence) == ["$99", "Acme Ultra"]


# --- the arena --------------------------------------------------------------------------------------------------------


def test_arena_errors_do_not_reveal_identity(
    fake_server: FakeOpenAI, server_settings: Settings, tmp_path: Path
) -> None:
    fake_server.script("support", status=500)
    with app_on(fake_server, server_settings, tmp_path) as url:
        client = Client(url, verbose=False)
        job = client.submit("Is roaming free?", "support", ["base", "adapter"], 0.0, 32, api_name="/arena_round")
        job.result(timeout=60)
        shown = json.dumps(job.outputs())
        assert HIDDEN_ERROR in shown and "server said 500" not in shown, "the failure is shown, not its reason"
        assert "support adapter" not in shown and "'support'" not in shown
        reveal_a, reveal_b, _ = client.predict("Both are bad", api_name="/arena_vote")
        assert "server said 500" in reveal_a + reveal_b, "the reason comes with the reveal"


def test_votes_per_session_are_rate_limited(fake_server: FakeOpenAI, server_settings: Settings, tmp_path: Path) -> None:
    with app_on(fake_server, tweaked(server_settings, ui={"votes_per_minute": 2}), tmp_path) as url:
        client = Client(url, verbose=False)
        for _ in range(2):
            client.predict("Hi", "support", ["base", "base+persona"], 0.0, 32, api_name="/arena_round")
            client.predict("Tie", api_name="/arena_vote")
        client.predict("Hi", "support", ["base", "base+persona"], 0.0, 32, api_name="/arena_round")
        with pytest.raises(AppError, match=r"2 votes in a minute, the most one session may cast"):
            client.predict("Tie", api_name="/arena_vote")
        other = Client(url, verbose=False)
        other.predict("Hi", "support", ["base", "base+persona"], 0.0, 32, api_name="/arena_round")
        other.predict("Tie", api_name="/arena_vote")  # another session has its own limit


# --- concurrency and availability -------------------------------------------------------------------------------------


def test_sixteen_retrievals_at_once(server_settings: Settings) -> None:
    rag = RAGStore(server_settings)
    questions = [f"How much is Acme Unlimited for {n} lines?" for n in range(16)]
    with ThreadPoolExecutor(16) as pool:
        for _ in range(5):
            results = list(pool.map(lambda q: rag.retrieve("support", q), questions))
            assert all(len(found) == server_settings.rag.passages for found in results), "each finds its passages"


def test_an_external_server_that_is_down_is_picked_up_when_it_comes_up(
    server_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    with VoteStore.in_folder(tmp_path) as store:
        client = ServingClient(f"http://127.0.0.1:{port}/v1", timeout_s=5)
        with launched(build_blocks(Services.build(server_settings, client, store=store))) as url:
            ui = Client(url, verbose=False)
            assert "not reachable" in ui.predict(api_name="/status") and "picks it up" in ui.predict(api_name="/status")
            with FakeOpenAI(port=port, adapters=["support"]):
                assert "base model and 1 adapter(s)" in ui.predict(api_name="/status")
                assert ask(ui, "Hello")[0][-1]["content"][0]["text"] == "OK."


def test_two_merges_with_one_name_at_once(
    fake_server: FakeOpenAI, server_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_lookups: list[str] = []  # the shipped adapters name their base model by hub id; a merge must not ask the hub
    monkeypatch.setattr(save_and_load, "check_file_exists_on_hf_hub", lambda repo, *_, **__: hub_lookups.append(repo))
    settings = tweaked(server_settings, paths={"adapters": REPO / "adapters", "data": tmp_path / "data"})
    with app_on(fake_server, settings, tmp_path) as url:
        client = Client(url, verbose=False)
        jobs = [client.submit("legal=0.5, support=0.5", "mix", "linear", 0.7, api_name="/adapters_merge")
                for _ in range(2)]  # fmt: skip
        messages = [job.result(timeout=300)[0] for job in jobs]
    merged = [message for message in messages if message.startswith("Merged into")]
    refused = [message for message in messages if message.startswith("⚠️") and "already" in message]
    assert len(merged) == 1 and len(refused) == 1, messages
    assert fake_server.adapters.count("mix") == 1
    assert not hub_lookups, hub_lookups


# --- bad input: what the model server does wrong, and odd text -----------------------------------------------------


@pytest.mark.parametrize(
    ("script", "shown"),
    [
        ({"status": 400}, "server said 400: scripted failure 400"),
        ({"status": 503}, "server said 503: scripted failure 503"),
        ({"fail_after": 2, "chunks": 6}, "not reachable"),  # the stream drops in the middle of the answer
        ({"delay_s": 3.0}, "the model server timed out"),  # a hanging server, with the client's timeout at 1 s
    ],
    ids=["4xx", "5xx", "dropped-stream", "slow"],
)
def test_model_server_failures_end_in_their_panel(
    fake_server: FakeOpenAI, server_settings: Settings, tmp_path: Path, script: dict[str, Any], shown: str
) -> None:
    fake_server.script("support", "A long answer that is cut off half way through.", **script)
    with VoteStore.in_folder(tmp_path) as store:
        services = Services.build(server_settings, ServingClient(fake_server.base_url, timeout_s=1), store=store)
        with launched(build_blocks(services)) as url:
            client = Client(url, verbose=False)
            adapter_panel = panel("support")
            outputs = client.predict("Hello", "support", 2, *adapter_panel, *PANEL * 3, api_name="/answer_all")
    failed, answered = outputs[0][-1]["content"][0]["text"], outputs[1][-1]["content"][0]["text"]
    assert "⚠️" in failed and shown in failed, failed
    assert answered == "OK.", "the other panel is not touched"


def test_control_characters_and_broken_unicode_are_cleaned(
    fake_server: FakeOpenAI, server_settings: Settings, tmp_path: Path
) -> None:
    with app_on(fake_server, server_settings, tmp_path) as url:
        ask(Client(url, verbose=False), "What\x00 is\x07 a\x1b tort?\n")
    assert fake_server.requests[-1]["messages"][-1]["content"] == "What is a tort?"
    assert checked_prompt("a lone \ud800 surrogate", 100) == "a lone ? surrogate", "JSON can carry one; UTF-8 not"


def test_out_of_range_sampling_is_refused(fake_server: FakeOpenAI, server_settings: Settings, tmp_path: Path) -> None:
    with app_on(fake_server, server_settings, tmp_path) as url:
        client = Client(url, verbose=False)
        for index, value, message in ((3, 5.0, "greater than maximum"), (4, 0.0, "less than minimum"),
                                      (5, 100_000, "greater than maximum")):  # fmt: skip
            panel = list(PANEL)
            panel[index] = value  # temperature, top-p, max tokens
            with pytest.raises(AppError, match=message):
                client.predict("Hi", "support", 2, *panel, *PANEL * 3, api_name="/answer_all")
    assert not fake_server.requests


def test_a_persona_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_bytes(b"name: broken\n\xff\xfe display_name: x\n")
    (tmp_path / "generic.yaml").write_text((REPO / "personas" / "generic.yaml").read_text())
    personas, problems = load_personas(tmp_path)
    assert list(personas) == ["generic"], "the other personas still load"
    assert [str(problem) for problem in problems] == [f"{tmp_path / 'broken.yaml'}: not UTF-8 text"]
