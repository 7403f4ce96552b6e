"""Versioned schema migrations of the arena votes database: an ordered list of small functions, one per version.

Migration N brings the schema from version N-1 to N. The table `schema_version` has one row per applied migration
(`version`, `name`, `applied_at`); the database's version is the highest. `upgrade(engine)` applies every pending
migration in ONE transaction (PostgreSQL and SQLite both roll DDL back), holding a lock so that two processes
opening a new database at once do not both migrate it: `pg_advisory_xact_lock` on PostgreSQL, `BEGIN IMMEDIATE`
(the write lock) on SQLite. A database made before versioning (a `votes` table, no `schema_version`) is version 1.

Adding a change: append a function decorated with `@migration`, never edit an applied one (databases in the field
already ran it), and update the ORM model in app/arena/store.py to the new shape (tests/test_store.py checks that
a migrated database matches the model).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Double,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    inspect,
    select,
    text,
)

Migration = Callable[[Connection], None]

MIGRATIONS: list[Migration] = []
"""Every migration in order: MIGRATIONS[0] is version 1."""

SQLITE_BEGIN_OPTION = "arena_sqlite_begin"
"""Execution option read by the store's SQLite `begin` hook: the statement that opens a transaction."""

PG_LOCK_KEY = 0x4152454E41  # "ARENA": the advisory lock that serialises migrations on one PostgreSQL database
ROUND_ID_INDEX = "ix_votes_round_id"
OUTCOMES_V1 = ("a", "b", "tie", "both_bad")


class MigrationError(RuntimeError):
    """The database's schema cannot be brought to this app's version; the message says why."""


_meta = MetaData()
schema_version = Table(
    "schema_version",
    _meta,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

# The `votes` table as `metadata.create_all` made it before versioning; frozen here, whatever the model becomes.
_VOTES_V1 = Table(
    "votes",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("session_id", String, nullable=False, index=True),
    Column("domain", String, nullable=True, index=True),
    Column("prompt", Text, nullable=False),
    Column("config_a", JSON, nullable=False),
    Column("config_b", JSON, nullable=False),
    Column("answer_a", Text, nullable=False),
    Column("answer_b", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("latency_a_s", Double, nullable=True),
    Column("latency_b_s", Double, nullable=True),
    Column("error_a", Text, nullable=True),
    Column("error_b", Text, nullable=True),
    CheckConstraint(f"outcome IN ({', '.join(repr(o) for o in OUTCOMES_V1)})", name="outcome_known"),
)
VOTES_V1_COLUMNS = frozenset(column.name for column in _VOTES_V1.columns)


def migration(function: Migration) -> Migration:
    """Register `function` as the next version."""
    MIGRATIONS.append(function)
    return function


@migration
def m001_votes(connection: Connection) -> None:
    """The append-only `votes` table with its indexes and outcome CHECK constraint."""
    _VOTES_V1.create(connection)


@migration
def m002_round_id(connection: Connection) -> None:
    """`votes.round_id`: the arena round a vote belongs to; a unique index allows one vote per round (NULL: none)."""
    connection.execute(text("ALTER TABLE votes ADD COLUMN round_id VARCHAR"))
    connection.execute(text(f"CREATE UNIQUE INDEX {ROUND_ID_INDEX} ON votes (round_id)"))


def latest_version() -> int:
    return len(MIGRATIONS)


def current_version(connection: Connection) -> int:
    """The database's schema version: 0 when empty, 1 for a pre-versioning `votes` table, else the highest row."""
    inspector = inspect(connection)
    if inspector.has_table(schema_version.name):
        return connection.scalar(select(func.max(schema_version.c.version))) or 0
    if inspector.has_table("votes"):
        return 1
    return 0


def upgrade(engine: Engine) -> tuple[int, int]:
    """Apply the pending migrations in one locked transaction; return (version before, version after)."""
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":  # take the write lock at BEGIN, not at the first write
            connection.execution_options(**{SQLITE_BEGIN_OPTION: "BEGIN IMMEDIATE"})
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
            before = current_version(connection)
            latest = latest_version()
            if before > latest:
                raise MigrationError(
                    f"its schema is version {before}, newer than this app's {latest}: upgrade the app "
                    "(or point it at another database)"
                )
            if before == latest:
                return before, before
            inspector = inspect(connection)
            if not inspector.has_table(schema_version.name):
                if before == 1:  # made by create_all before versioning: check it is the shape migration 1 makes
                    found = {column["name"] for column in inspector.get_columns("votes")}
                    if found != VOTES_V1_COLUMNS:
                        raise MigrationError(
                            "its `votes` table has no schema_version and not the original columns "
                            f"(unexpected: {', '.join(sorted(found ^ VOTES_V1_COLUMNS))}); migrate it by hand"
                        )
                schema_version.create(connection)
                if before == 1:
                    _record(connection, 1, "m001_votes (existing table, made before versioning)")
            for version in range(before + 1, latest + 1):
                step = MIGRATIONS[version - 1]
                step(connection)
                _record(connection, version, step.__name__)
            return before, latest


def _record(connection: Connection, version: int, name: str) -> None:
    connection.execute(schema_version.insert().values(version=version, name=name, applied_at=dt.datetime.now(dt.UTC)))
