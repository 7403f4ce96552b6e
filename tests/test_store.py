"""Vote storage on real databases, SQLite files and a real PostgreSQL server (`vote_store_url` runs a test on each):
round trip, votes surviving a restart, concurrent writers, versioned migrations (an old database is upgraded),
one vote per round enforced by the database, and errors (password masked, database down)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, inspect, make_url, text
from sqlalchemy.exc import IntegrityError

from app.arena import migrations
from app.arena.store import DuplicateVote, StoreError, VoteStore, _Base, sqlite_url
from tests.conftest import PostgresServer

LEGAL = {"adapter": "legal", "persona": "legal", "rag": "legal", "temperature": 0.7, "max_tokens": 256}
BASE = {"adapter": None, "persona": None, "rag": None, "temperature": 0.7, "max_tokens": 256}

# The schema `metadata.create_all` made before versioned migrations (what databases in the field have), per backend.
LEGACY_SCHEMA = {
    "sqlite": """
        CREATE TABLE votes (
            id INTEGER NOT NULL,
            created_at DATETIME NOT NULL,
            session_id VARCHAR NOT NULL,
            domain VARCHAR,
            prompt TEXT NOT NULL,
            config_a JSON NOT NULL,
            config_b JSON NOT NULL,
            answer_a TEXT NOT NULL,
            answer_b TEXT NOT NULL,
            outcome VARCHAR(16) NOT NULL,
            latency_a_s DOUBLE,
            latency_b_s DOUBLE,
            error_a TEXT,
            error_b TEXT,
            PRIMARY KEY (id),
            CONSTRAINT outcome_known CHECK (outcome IN ('a', 'b', 'tie', 'both_bad'))
        );
        CREATE INDEX ix_votes_created_at ON votes (created_at);
        CREATE INDEX ix_votes_domain ON votes (domain);
        CREATE INDEX ix_votes_session_id ON votes (session_id)
    """,
    "postgresql": """
        CREATE TABLE votes (
            id SERIAL NOT NULL,
            created_at TIMESTAMP WITH TIME ZONE NOT NULL,
            session_id VARCHAR NOT NULL,
            domain VARCHAR,
            prompt TEXT NOT NULL,
            config_a JSON NOT NULL,
            config_b JSON NOT NULL,
            answer_a TEXT NOT NULL,
            answer_b TEXT NOT NULL,
            outcome VARCHAR(16) NOT NULL,
            latency_a_s DOUBLE PRECISION,
            latency_b_s DOUBLE PRECISION,
            error_a TEXT,
            error_b TEXT,
            PRIMARY KEY (id),
            CONSTRAINT outcome_known CHECK (outcome IN ('a', 'b', 'tie', 'both_bad'))
        );
        CREATE INDEX ix_votes_created_at ON votes (created_at);
        CREATE INDEX ix_votes_domain ON votes (domain);
        CREATE INDEX ix_votes_session_id ON votes (session_id)
    """,
}
LEGACY_VOTE = (
    "INSERT INTO votes (created_at, session_id, domain, prompt, config_a, config_b, answer_a, answer_b, outcome, "
    "latency_a_s) VALUES ('{created_at}', 'old-session', 'legal', 'An old question', "
    "'{{\"adapter\": \"legal\"}}', '{{\"adapter\": null}}', 'old A', 'old B', 'b', 1.25)"
)
LEGACY_TIME = {"sqlite": "2026-01-02 03:04:05.000000", "postgresql": "2026-01-02 03:04:05+00:00"}  # as each stored it


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


def backend(url: str) -> str:
    return make_url(url).get_backend_name()


def run_sql(url: str, script: str) -> None:
    """Statements separated by `;`, in one transaction, on a plain engine (no store, no migrations)."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in filter(str.strip, script.split(";")):
                connection.execute(text(statement))
    finally:
        engine.dispose()


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql))]
    finally:
        engine.dispose()


def schema(url: str) -> dict[str, Any]:
    """What the database says the `votes` table is: columns (type, nullable), indexes, CHECK constraints."""
    engine = create_engine(url)
    try:
        inspector = inspect(engine)
        return {
            "columns": {c["name"]: (str(c["type"]), c["nullable"]) for c in inspector.get_columns("votes")},
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes("votes")
            ),
            "checks": sorted(c["name"] for c in inspector.get_check_constraints("votes")),
            "primary_key": inspector.get_pk_constraint("votes")["constrained_columns"],
        }
    finally:
        engine.dispose()


def inspect_has_table(url: str, name: str) -> bool:
    engine = create_engine(url)
    try:
        return inspect(engine).has_table(name)
    finally:
        engine.dispose()


def applied(url: str) -> list[tuple[int, str]]:
    return [(version, name) for version, name, _ in query(url, "SELECT * FROM schema_version ORDER BY version")]


def run_threads(count: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(number,)) for number in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)


def test_round_trip(vote_store_url: str) -> None:
    before = dt.datetime.now(dt.UTC)
    with VoteStore(vote_store_url) as store:
        first = store.add_vote(**vote(latency_a_s=1.5, latency_b_s=0.25, round_id="round-1"))
        second = store.add_vote(**vote(outcome="both_bad", domain=None, error_b="timed out", answer_b="ünïcode ✓"))
        votes = store.votes()
        assert store.count() == 2
        assert store.count("legal") == 1
        assert [v.id for v in store.votes("legal")] == [first]
        assert store.votes("finance") == []
    assert [v.id for v in votes] == [first, second]
    one, two = votes
    assert (one.session_id, one.domain, one.prompt, one.outcome) == ("session-1", "legal", "What is a tort?", "a")
    assert (one.config_a, one.config_b) == (LEGAL, BASE)
    assert (one.answer_a, one.answer_b, one.latency_a_s, one.latency_b_s) == ("A civil wrong.", "A cake.", 1.5, 0.25)
    assert (one.round_id, two.round_id) == ("round-1", None)
    assert not one.errored
    assert (two.outcome, two.domain, two.error_b, two.answer_b) == ("both_bad", None, "timed out", "ünïcode ✓")
    assert two.errored
    assert one.created_at.tzinfo is not None
    assert before <= one.created_at <= two.created_at <= dt.datetime.now(dt.UTC)


def test_default_sqlite_file_uses_wal_and_busy_timeout(tmp_path: Path) -> None:
    with VoteStore.in_folder(tmp_path / "data") as store:
        store.add_vote(**vote())
        with store.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
    path = tmp_path / "data" / "arena.db"
    with sqlite3.connect(path) as raw:  # WAL is a property of the file itself, not only of our connections
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_votes_survive_restart(vote_store_url: str) -> None:
    with VoteStore(vote_store_url) as store:
        first = store.add_vote(**vote())
    with VoteStore(vote_store_url) as store:  # a new process would do exactly this
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


def test_two_stores_write_concurrently(vote_store_url: str) -> None:
    """Two engines on one database, like two app processes writing at once: no vote fails or is lost."""
    stores = [VoteStore(vote_store_url), VoteStore(vote_store_url)]
    errors: list[BaseException] = []

    def write(number: int) -> None:
        try:
            for _ in range(25):
                stores[number].add_vote(**vote(session_id=f"s{number}"))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    run_threads(2, write)
    assert errors == []
    assert stores[0].count() == 50
    assert len({v.id for v in stores[1].votes()}) == 50
    for store in stores:
        store.close()


def test_rejects_unknown_outcome(vote_store_url: str) -> None:
    with VoteStore(vote_store_url) as store:
        with pytest.raises(ValueError, match="outcome must be one of a, b, tie, both_bad"):
            store.add_vote(**vote(outcome="left"))
        with store.engine.begin() as connection, pytest.raises(IntegrityError, match=r"(?i)check constraint"):
            connection.execute(
                text(
                    "INSERT INTO votes (created_at, session_id, prompt, config_a, config_b, answer_a, answer_b, "
                    "outcome) VALUES ('2026-01-01', 's', 'p', '{}', '{}', 'x', 'y', 'left')"
                )
            )
        assert store.count() == 0


# Migrations


def test_new_database_is_migrated_to_the_latest_version(vote_store_url: str) -> None:
    with VoteStore(vote_store_url) as store:
        assert store.schema_version == migrations.latest_version() == 2
    assert applied(vote_store_url) == [(1, "m001_votes"), (2, "m002_round_id")]
    found = schema(vote_store_url)
    model = _Base.metadata.tables["votes"]
    assert set(found["columns"]) == {column.name for column in model.columns}  # the model maps what was migrated
    assert found["columns"]["round_id"][1] is True  # nullable: votes from before round ids have none
    assert ("ix_votes_round_id", ("round_id",), True) in found["indexes"]
    assert {index.name for index in model.indexes} == {name for name, _, _ in found["indexes"]}
    assert found["checks"] == ["outcome_known"]


def test_old_database_is_upgraded_and_keeps_its_votes(vote_store_url: str) -> None:
    """A database made by create_all before versioning (no schema_version) is taken as version 1 and upgraded."""
    kind = backend(vote_store_url)
    run_sql(vote_store_url, LEGACY_SCHEMA[kind] + ";" + LEGACY_VOTE.format(created_at=LEGACY_TIME[kind]))
    with VoteStore(vote_store_url) as store:
        assert store.schema_version == 2
        [old] = store.votes()
        assert (old.session_id, old.prompt, old.outcome, old.latency_a_s) == (
            "old-session",
            "An old question",
            "b",
            1.25,
        )
        assert (old.config_a, old.config_b, old.round_id) == ({"adapter": "legal"}, {"adapter": None}, None)
        assert old.created_at == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        new = store.add_vote(**vote(round_id="r1"))
        assert new > old.id
        with pytest.raises(DuplicateVote):
            store.add_vote(**vote(round_id="r1"))
        store.add_vote(**vote())  # votes without a round id, like the old one, never collide
        assert store.count() == 3
    assert applied(vote_store_url) == [
        (1, "m001_votes (existing table, made before versioning)"),
        (2, "m002_round_id"),
    ]
    # Migration 1 makes exactly the legacy table: the upgraded old database has the schema of a new one.
    upgraded = schema(vote_store_url)
    run_sql(vote_store_url, "DROP TABLE votes; DROP TABLE schema_version")
    VoteStore(vote_store_url).close()
    assert applied(vote_store_url) == [(1, "m001_votes"), (2, "m002_round_id")]
    assert schema(vote_store_url) == upgraded


def test_reopening_applies_nothing(vote_store_url: str) -> None:
    VoteStore(vote_store_url).close()
    before = query(vote_store_url, "SELECT * FROM schema_version ORDER BY version")
    with VoteStore(vote_store_url) as store:
        assert store.schema_version == 2
    assert query(vote_store_url, "SELECT * FROM schema_version ORDER BY version") == before


def test_failed_migration_is_rolled_back(vote_store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """All pending migrations run in one transaction: one that fails leaves the database as it was."""
    with VoteStore(vote_store_url) as store:
        store.add_vote(**vote(round_id="r1"))

    def m003_broken(connection: Connection) -> None:
        connection.execute(text("CREATE TABLE half_done (id INTEGER PRIMARY KEY)"))
        connection.execute(text("ALTER TABLE votes ADD COLUMN half_done VARCHAR"))
        connection.execute(text("SELECT no_such_column FROM votes"))

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m003_broken])
    with pytest.raises(StoreError, match=r"cannot open votes database .*no_such_column"):
        VoteStore(vote_store_url)
    monkeypatch.undo()
    assert "half_done" not in schema(vote_store_url)["columns"]
    assert not inspect_has_table(vote_store_url, "half_done")
    assert applied(vote_store_url)[-1] == (2, "m002_round_id")
    with VoteStore(vote_store_url) as store:
        assert [v.round_id for v in store.votes()] == ["r1"]


def test_newer_schema_is_refused(vote_store_url: str) -> None:
    VoteStore(vote_store_url).close()
    run_sql(
        vote_store_url,
        "INSERT INTO schema_version (version, name, applied_at) VALUES (3, 'from_the_future', '2027-01-01')",
    )
    with pytest.raises(StoreError, match="schema is version 3, newer than this app's 2"):
        VoteStore(vote_store_url)


def test_unknown_votes_table_is_refused(vote_store_url: str) -> None:
    run_sql(vote_store_url, "CREATE TABLE votes (id INTEGER PRIMARY KEY, verdict VARCHAR)")
    with pytest.raises(StoreError, match="not the original columns"):
        VoteStore(vote_store_url)


def test_two_processes_opening_a_new_database_at_once(vote_store_url: str) -> None:
    """The migration lock: both stores open, the migrations run once."""
    opened: list[VoteStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def open_store(_number: int) -> None:
        try:
            barrier.wait(timeout=30)
            opened.append(VoteStore(vote_store_url))
        except BaseException as exc:
            errors.append(exc)

    run_threads(3, open_store)
    assert errors == []
    assert [store.schema_version for store in opened] == [2, 2, 2]
    assert applied(vote_store_url) == [(1, "m001_votes"), (2, "m002_round_id")]
    for store in opened:
        store.close()


# One vote per round


def test_second_vote_on_a_round_is_refused(vote_store_url: str) -> None:
    with VoteStore(vote_store_url) as store:
        first = store.add_vote(**vote(round_id="round-7"))
        with pytest.raises(DuplicateVote, match="round 'round-7' already has a vote") as info:
            store.add_vote(**vote(round_id="round-7", outcome="b"))
        assert isinstance(info.value, StoreError)
        assert info.value.round_id == "round-7"
        store.add_vote(**vote(round_id="round-8"))
        store.add_vote(**vote())
        store.add_vote(**vote())  # no round id: never refused
        assert [(v.id == first, v.round_id, v.outcome) for v in store.votes()][:2] == [
            (True, "round-7", "a"),
            (False, "round-8", "a"),
        ]
        assert store.count() == 4
        with pytest.raises(ValueError, match="round_id must be a non-empty string"):
            store.add_vote(**vote(round_id=""))
        # Enforced by the database itself, not only by add_vote:
        with store.engine.begin() as connection, pytest.raises(IntegrityError):
            connection.execute(
                text(
                    "INSERT INTO votes (created_at, session_id, prompt, config_a, config_b, answer_a, answer_b, "
                    "outcome, round_id) VALUES ('2026-01-01', 's', 'p', '{}', '{}', 'x', 'y', 'a', 'round-7')"
                )
            )
        assert store.count() == 4


def test_concurrent_votes_on_one_round_keep_exactly_one(vote_store_url: str) -> None:
    """Two replicas store a vote on the same round at the same moment, round after round: one row per round."""
    stores = [VoteStore(vote_store_url), VoteStore(vote_store_url)]
    rounds = 10
    barrier = threading.Barrier(2)
    saved: list[tuple[str, int]] = []
    refused: list[str] = []
    errors: list[BaseException] = []

    def voter(number: int) -> None:
        for round_number in range(rounds):
            round_id = f"round-{round_number}"
            try:
                barrier.wait(timeout=30)
                saved.append((round_id, stores[number].add_vote(**vote(round_id=round_id, session_id=f"s{number}"))))
            except DuplicateVote as exc:
                refused.append(exc.round_id)
            except BaseException as exc:
                errors.append(exc)

    try:
        run_threads(2, voter)
        assert errors == []
        assert sorted(round_id for round_id, _ in saved) == [f"round-{n}" for n in range(rounds)]
        assert sorted(refused) == sorted(round_id for round_id, _ in saved)
        assert sorted(v.round_id for v in stores[0].votes()) == sorted(round_id for round_id, _ in saved)
        assert stores[1].count() == rounds
    finally:
        for store in stores:
            store.close()


# Errors


def test_clear_errors_for_bad_urls(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not valid: expected"):
        VoteStore("not a url")
    with pytest.raises(StoreError, match="not valid: expected") as info:
        VoteStore("postgresql+psycopg://arena:s3cret@host:port/arena")
    assert "s3cret" not in str(info.value)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create the votes database folder"):
        VoteStore(sqlite_url(blocker / "sub" / "arena.db"))


def test_unreachable_server_error_masks_the_password() -> None:
    url = "postgresql+psycopg://arena:hunter2-secret@127.0.0.1:1/arena"  # nothing listens on port 1
    with pytest.raises(StoreError) as info:
        VoteStore(url)
    message = str(info.value)
    assert message.startswith("cannot open votes database postgresql+psycopg://arena:***@127.0.0.1:1/arena: ")
    assert "refused" in message.lower()
    assert "hunter2" not in message


def test_wrong_password_error_masks_it(postgres_server: PostgresServer) -> None:
    with pytest.raises(StoreError, match="password authentication failed") as info:
        VoteStore(postgres_server.url(password="wrong-hunter2"))
    assert "hunter2" not in str(info.value)
    assert ":***@127.0.0.1" in str(info.value)


def test_database_down_gives_a_store_error(postgres_server: PostgresServer, postgres_database: str) -> None:
    """PostgreSQL stops under a running app: adding or reading votes raises StoreError; it works again after."""
    with VoteStore(postgres_database) as store:
        store.add_vote(**vote(round_id="before"))
        postgres_server.stop()
        try:
            with pytest.raises(StoreError, match=r"could not save the vote to postgresql\+psycopg://postgres:\*\*\*@"):
                store.add_vote(**vote(round_id="during"))
            with pytest.raises(StoreError, match="could not read the votes"):
                store.votes()
            with pytest.raises(StoreError, match="could not count the votes"):
                store.count()
        finally:
            postgres_server.start()
        store.add_vote(**vote(round_id="after"))
        assert [v.round_id for v in store.votes()] == ["before", "after"]
