"""Vote storage on real SQLite files: round trip, WAL mode, votes surviving a restart, concurrent writers, errors."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.arena.store import StoreError, VoteStore, sqlite_url

LEGAL = {"adapter": "legal", "persona": "legal", "rag": "legal", "temperature": 0.7, "max_tokens": 256}
BASE = {"adapter": None, "persona": None, "rag": None, "temperature": 0.7, "max_tokens": 256}


def vote(**changes: Any) -> dict[str, Any]:
    return {
        "session_id": "session-1",
        "prompt": "What is a tort?",
        "config_a": LEGAL,
        "config_b": BASE,
        "answer_a": "A civil wrong.",
        "answer_b": "A cake.",
        "outcome": "a",
        "domain": "legal",
        **changes,
    }


def test_round_trip(tmp_path: Path) -> None:
    before = dt.datetime.now(dt.UTC)
    with VoteStore.in_folder(tmp_path / "data") as store:
        first = store.add_vote(**vote(latency_a_s=1.5, latency_b_s=0.25))
        second = store.add_vote(**vote(outcome="both_bad", domain=None, error_b="timed out", answer_b="ünïcode ✓"))
        votes = store.votes()
        assert (tmp_path / "data" / "arena.db").is_file()
        assert store.count() == 2
        assert store.count("legal") == 1
        assert [v.id for v in store.votes("legal")] == [first]
        assert store.votes("finance") == []
    assert [v.id for v in votes] == [first, second]
    one, two = votes
    assert (one.session_id, one.domain, one.prompt, one.outcome) == ("session-1", "legal", "What is a tort?", "a")
    assert (one.config_a, one.config_b) == (LEGAL, BASE)
    assert (one.answer_a, one.answer_b, one.latency_a_s, one.latency_b_s) == ("A civil wrong.", "A cake.", 1.5, 0.25)
    assert not one.errored
    assert (two.outcome, two.domain, two.error_b, two.answer_b) == ("both_bad", None, "timed out", "ünïcode ✓")
    assert two.errored
    assert one.created_at.tzinfo is not None
    assert before <= one.created_at <= two.created_at <= dt.datetime.now(dt.UTC)


def test_sqlite_uses_wal_and_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "arena.db"
    with VoteStore(sqlite_url(path)) as store:
        store.add_vote(**vote())
        with store.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
    with sqlite3.connect(path) as raw:  # WAL is a property of the file itself, not only of our connections
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_votes_survive_restart(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "arena.db")
    with VoteStore(url) as store:
        first = store.add_vote(**vote())
    with VoteStore(url) as store:  # a new process would do exactly this
        assert store.count() == 1
        assert store.votes()[0].config_a == LEGAL
        second = store.add_vote(**vote(outcome="tie"))
        assert second > first
        assert [v.outcome for v in store.votes()] == ["a", "tie"]


def test_configs_are_stored_as_json_text(tmp_path: Path) -> None:
    path = tmp_path / "arena.db"
    with VoteStore(sqlite_url(path)) as store:
        store.add_vote(**vote())
    with sqlite3.connect(path) as raw:
        config_a, outcome = raw.execute("SELECT config_a, outcome FROM votes").fetchone()
    assert json.loads(config_a) == LEGAL
    assert outcome == "a"


def test_two_stores_write_concurrently(tmp_path: Path) -> None:
    """Two engines on one file, like two app processes writing at once: no vote fails or is lost."""
    url = sqlite_url(tmp_path / "arena.db")
    stores = [VoteStore(url), VoteStore(url)]
    errors: list[BaseException] = []

    def write(store: VoteStore, session: str) -> None:
        try:
            for _ in range(25):
                store.add_vote(**vote(session_id=session))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, f"s{i}")) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert stores[0].count() == 50
    assert len({v.id for v in stores[1].votes()}) == 50
    for store in stores:
        store.close()


def test_rejects_unknown_outcome(tmp_path: Path) -> None:
    with VoteStore(sqlite_url(tmp_path / "arena.db")) as store:
        with pytest.raises(ValueError, match="outcome must be one of a, b, tie, both_bad"):
            store.add_vote(**vote(outcome="left"))
        with store.engine.begin() as connection, pytest.raises(IntegrityError, match="CHECK constraint"):
            connection.execute(
                text(
                    "INSERT INTO votes (created_at, session_id, prompt, config_a, config_b, answer_a, answer_b, "
                    "outcome) VALUES ('2026-01-01', 's', 'p', '{}', '{}', 'x', 'y', 'left')"
                )
            )
        assert store.count() == 0


def test_clear_errors_for_bad_urls(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not valid: expected"):
        VoteStore("not a url")
    with pytest.raises(StoreError, match="psycopg") as info:
        VoteStore("postgresql+psycopg://arena:secret@127.0.0.1:1/arena")
    assert "secret" not in str(info.value)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create the votes database folder"):
        VoteStore(sqlite_url(blocker / "sub" / "arena.db"))
