"""Arena vote storage: append-only vote events in a SQL database through SQLAlchemy 2.

By default a SQLite file at `<paths.data>/arena.db` in WAL journal mode (readers never block the writer; a busy
timeout makes concurrent writers wait instead of failing). Several app replicas share one PostgreSQL database by
URL instead, e.g. `postgresql+psycopg://arena:secret@db-host:5432/arena` (driver: psycopg, in requirements.txt).
Configurations are stored as JSON, never pickled. Opening a store applies the pending schema migrations
(app/arena/migrations.py) in one transaction. One vote per arena round: `round_id` is unique in the database, a
second vote on a round raises `DuplicateVote`. Errors are `StoreError`s whose messages never show the URL's
password. Blocking calls: from async code run them in a worker thread
(`await anyio.to_thread.run_sync(lambda: store.add_vote(...))`). Look at a database:

    .venv/bin/python -c "from app.arena.store import VoteStore; print(VoteStore('sqlite:///.data/arena.db').count())"
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Connection,
    DateTime,
    Engine,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from app.arena import migrations
from app.arena.ratings import OUTCOMES, Outcome
from app.config import Settings

SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 10  # a database host that does not answer fails in 10 s, not the OS's minutes
DB_FILENAME = "arena.db"


class StoreError(RuntimeError):
    """The votes database cannot be opened, read or written; the message says which and why (password masked)."""


class DuplicateVote(StoreError):
    """The round already has a vote: the database keeps one vote per `round_id`."""

    def __init__(self, round_id: str) -> None:
        super().__init__(f"round {round_id!r} already has a vote (one vote per round)")
        self.round_id = round_id


class _Base(DeclarativeBase):
    pass


class _VoteRow(_Base):
    """The `votes` table as the migrations leave it (app/arena/migrations.py makes it; this model only maps it)."""

    __tablename__ = "votes"
    __table_args__ = (CheckConstraint(f"outcome IN ({', '.join(repr(o) for o in OUTCOMES)})", name="outcome_known"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    session_id: Mapped[str] = mapped_column(String, index=True)
    domain: Mapped[str | None] = mapped_column(String, index=True)
    prompt: Mapped[str] = mapped_column(Text)
    config_a: Mapped[dict[str, Any]] = mapped_column(JSON)
    config_b: Mapped[dict[str, Any]] = mapped_column(JSON)
    answer_a: Mapped[str] = mapped_column(Text)
    answer_b: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    latency_a_s: Mapped[float | None]
    latency_b_s: Mapped[float | None]
    error_a: Mapped[str | None] = mapped_column(Text)
    error_b: Mapped[str | None] = mapped_column(Text)
    round_id: Mapped[str | None] = mapped_column(String, unique=True, index=True)  # migration 2


@dataclass(frozen=True)
class Vote:
    """One stored vote: what was asked, the two configurations and answers (A = left panel), and the verdict."""

    id: int
    created_at: dt.datetime  # UTC
    session_id: str
    domain: str | None
    prompt: str
    config_a: dict[str, Any]
    config_b: dict[str, Any]
    answer_a: str
    answer_b: str
    outcome: Outcome
    latency_a_s: float | None = None
    latency_b_s: float | None = None
    error_a: str | None = None
    error_b: str | None = None
    round_id: str | None = None  # the arena round voted on; None for votes stored before round ids

    @property
    def errored(self) -> bool:
        """True when either panel failed to answer (such votes say nothing about the configurations)."""
        return bool(self.error_a or self.error_b)


def sqlite_url(path: Path) -> str:
    """SQLAlchemy URL of a SQLite file."""
    return URL.create("sqlite", database=str(path)).render_as_string()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module would BEGIN only before INSERT/UPDATE/DELETE and run DDL outside any transaction: turn
    # that off and BEGIN ourselves (_sqlite_begin), so migrations are transactional (SQLAlchemy's SQLite recipe).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _switch_to_wal(cursor)
    cursor.close()


def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    """WAL is a property of the file, kept once set. The switch needs a lock that SQLite does not wait for (the busy
    timeout does not apply: three processes opening a new database at once got "database is locked"), so it is
    retried for as long as the busy timeout would have waited."""
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql(connection.get_execution_options().get(migrations.SQLITE_BEGIN_OPTION, "BEGIN"))


def _is_duplicate_round(exc: IntegrityError) -> bool:
    orig = exc.orig
    constraint = getattr(getattr(orig, "diag", None), "constraint_name", None)  # psycopg
    return constraint == migrations.ROUND_ID_INDEX or "votes.round_id" in str(orig)  # or SQLite's message


def _to_vote(row: _VoteRow) -> Vote:
    values = {field.name: getattr(row, field.name) for field in fields(Vote)}
    if values["created_at"].tzinfo is None:  # SQLite keeps no time zone; everything stored is UTC
        values["created_at"] = values["created_at"].replace(tzinfo=dt.UTC)
    return Vote(**values)


def _reason(exc: BaseException) -> str:
    """The driver's own message when there is one (it names the real problem), else SQLAlchemy's, on one line."""
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


class VoteStore:
    """Append-only arena votes in the database at `url` (SQLite file or PostgreSQL). Close it, or use `with`."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError) as exc:  # ValueError: e.g. a port that is not a number
            raise StoreError(
                "votes database URL is not valid: expected e.g. sqlite:///.data/arena.db or "
                "postgresql+psycopg://user:password@host:5432/arena"
            ) from exc
        self.url: str = parsed.render_as_string(hide_password=True)  # password masked (***): safe to show and log
        self._password = str(parsed.password) if parsed.password else ""
        backend = parsed.get_backend_name()
        if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
            folder = Path(parsed.database).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the votes database folder {folder}: {exc.strerror}") from exc
        connect_args: dict[str, Any] = {}
        if backend == "postgresql" and "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
        try:
            self.engine: Engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
        except (ImportError, ArgumentError) as exc:
            raise StoreError(
                f"cannot use votes database {self.url}: {self._masked(str(exc))}; install its driver "
                "(PostgreSQL: pip install 'psycopg[binary]')"
            ) from exc
        if backend == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        try:
            self.schema_version: int = migrations.upgrade(self.engine)[1]  # as migrated: the latest
        except (SQLAlchemyError, migrations.MigrationError) as exc:
            self.engine.dispose()
            raise StoreError(f"cannot open votes database {self.url}: {self._masked(_reason(exc))}") from exc

    def _masked(self, message: str) -> str:
        """`message` with the URL's password (should a driver ever quote it) replaced by ***."""
        return message.replace(self._password, "***") if self._password else message

    @classmethod
    def in_folder(cls, data_dir: Path) -> VoteStore:
        """The default store: SQLite `arena.db` in the app's data folder (settings.paths.data)."""
        return cls(sqlite_url(data_dir / DB_FILENAME))

    @classmethod
    def from_settings(cls, settings: Settings) -> VoteStore:
        """`arena.database_url` when set (e.g. PostgreSQL for several replicas), else the default SQLite file."""
        url = settings.arena.database_url
        return cls(url) if url else cls.in_folder(settings.paths.data)

    def add_vote(
        self,
        *,
        session_id: str,
        prompt: str,
        config_a: Mapping[str, Any],
        config_b: Mapping[str, Any],
        answer_a: str,
        answer_b: str,
        outcome: Outcome,
        domain: str | None = None,
        latency_a_s: float | None = None,
        latency_b_s: float | None = None,
        error_a: str | None = None,
        error_b: str | None = None,
        round_id: str | None = None,
    ) -> int:
        """Record one vote (A = the left panel) and return its id.

        `round_id` names the arena round voted on: the database takes one vote per round id and raises
        `DuplicateVote` for a second one (None: no round, never refused). `StoreError` when the database fails.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}; got {outcome!r}")
        if round_id is not None and not round_id:
            raise ValueError("round_id must be a non-empty string, or None")
        row = _VoteRow(
            created_at=dt.datetime.now(dt.UTC),
            session_id=session_id,
            domain=domain,
            prompt=prompt,
            config_a=dict(config_a),
            config_b=dict(config_b),
            answer_a=answer_a,
            answer_b=answer_b,
            outcome=outcome,
            latency_a_s=latency_a_s,
            latency_b_s=latency_b_s,
            error_a=error_a,
            error_b=error_b,
            round_id=round_id,
        )
        try:
            with Session(self.engine) as session, session.begin():
                session.add(row)
                session.flush()
                return row.id
        except IntegrityError as exc:
            if round_id is not None and _is_duplicate_round(exc):
                raise DuplicateVote(round_id) from exc
            raise StoreError(f"could not save the vote: {self._masked(_reason(exc))}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"could not save the vote to {self.url}: {self._masked(_reason(exc))}") from exc

    def votes(self, domain: str | None = None) -> list[Vote]:
        """Every vote, oldest first; only those of `domain` when given."""
        query = select(_VoteRow).order_by(_VoteRow.id)
        if domain is not None:
            query = query.where(_VoteRow.domain == domain)
        try:
            with Session(self.engine) as session:
                return [_to_vote(row) for row in session.scalars(query)]
        except SQLAlchemyError as exc:
            raise StoreError(f"could not read the votes from {self.url}: {self._masked(_reason(exc))}") from exc

    def count(self, domain: str | None = None) -> int:
        query = select(func.count()).select_from(_VoteRow)
        if domain is not None:
            query = query.where(_VoteRow.domain == domain)
        try:
            with Session(self.engine) as session:
                return session.scalar(query) or 0
        except SQLAlchemyError as exc:
            raise StoreError(f"could not count the votes in {self.url}: {self._masked(_reason(exc))}") from exc

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> VoteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
