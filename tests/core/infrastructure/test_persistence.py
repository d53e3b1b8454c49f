"""Persistence on both SQLite and PostgreSQL: migrations, keys, audit, concurrent writers."""

import threading

import pytest
from sqlalchemy import inspect, text

from espalier.core.infrastructure.audit import AuditEvent, AuditLog
from espalier.core.infrastructure.db import create_db_engine, session_scope, upgrade
from espalier.core.infrastructure.db.migrate import current_revision, head_revision, is_up_to_date
from espalier.core.infrastructure.errors import NotFound, Unauthenticated
from espalier.core.interface.keys import KeyService


@pytest.fixture
def engine(database_url):
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


def test_migrations_create_every_table(engine):
    assert not is_up_to_date(engine)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {"api_keys", "audit_events", "jobs", "job_logs", "alembic_version"} <= tables
    upgrade(engine)  # idempotent
    assert is_up_to_date(engine)


def test_sqlite_runs_in_wal_mode_with_busy_timeout(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_keys_are_hashed_at_rest_and_authenticate(engine):
    upgrade(engine)
    keys = KeyService(engine)
    created = keys.create(name="ci", role="operator")
    secret = created.key.split("_", 2)[2]
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT secret_hash FROM api_keys")).scalar()
    assert secret not in stored and stored.startswith("$argon2")
    principal = keys.authenticate(created.key)
    assert (principal.key_id, principal.role, principal.name) == (created.record.id, "operator", "ci")
    # a fresh service (another process) verifies from the hash alone
    assert KeyService(engine).authenticate(created.key).key_id == created.record.id
    with pytest.raises(Unauthenticated):
        keys.authenticate(created.key[:-2] + "xx")
    keys.revoke(created.record.id)
    with pytest.raises(Unauthenticated, match="revoked"):
        keys.authenticate(created.key)
    with pytest.raises(NotFound):
        keys.revoke("missing")


def test_key_checks_read_without_queueing_behind_a_writer(engine):
    upgrade(engine)
    keys = KeyService(engine)
    created = keys.create(name="busy", role="user")
    keys.authenticate(created.key)  # records last use: the next check within a minute only reads
    with engine.connect() as connection:
        assert connection.execute(text("SELECT last_used_at FROM api_keys")).scalar() is not None
    done, errors = threading.Event(), []

    def check() -> None:
        try:
            keys.authenticate(created.key)
        except Exception as error:  # reported below
            errors.append(error)
        done.set()

    with engine.begin() as writer:  # a long write transaction (on SQLite it holds the one write lock)
        writer.execute(text("UPDATE api_keys SET name = 'busier'"))
        checker = threading.Thread(target=check)
        checker.start()
        assert done.wait(5), "the key check waited for the writer"
    checker.join()
    assert not errors


def test_key_creation_and_revocation_are_audited(engine):
    upgrade(engine)
    keys = KeyService(engine)
    created = keys.create(name="a", role="user")
    keys.revoke(created.record.id)
    actions = [event.action for event in AuditLog(engine).list()]
    assert actions == ["key.revoke", "key.create"]
    with session_scope(engine) as session:
        assert session.get(AuditEvent, 1).details == {"name": "a", "role": "user"}


def test_concurrent_writers_all_succeed(engine):
    upgrade(engine)
    audit = AuditLog(engine)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for index in range(25):
                audit.record(None, "test.write", f"{worker}-{index}")
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(audit.list(limit=1000, action="test.write")) == 200


def test_timestamps_come_back_timezone_aware(engine):
    upgrade(engine)
    record = KeyService(engine).create(name="tz", role="user").record
    fetched = KeyService(engine).list()[0]
    assert fetched.created_at.tzinfo is not None
    assert abs((fetched.created_at - record.created_at).total_seconds()) < 1


def test_migrations_match_the_tables(engine):
    """The migrations build exactly the schema the sqlmodel tables describe (no forgotten column)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from espalier.core.schema import metadata

    upgrade(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        diff = compare_metadata(context, metadata)
    assert diff == [], f"tables and migrations differ: {diff}"


def test_sqlite_commits_are_durable_on_power_loss_by_default(tmp_path):
    from espalier.core.infrastructure.settings import Settings
    from espalier.core.platform import Platform

    def synchronous(engine):
        with engine.connect() as connection:
            return connection.execute(text("PRAGMA synchronous")).scalar()

    for home in ("a", "b"):
        (tmp_path / home).mkdir()
    platform = Platform(Settings(home=tmp_path / "a"), load_entry_points=False)
    assert synchronous(platform.engine) == 2  # FULL: the WAL is synced at every commit
    platform.engine.dispose()
    faster = Platform(Settings(home=tmp_path / "b", sqlite_synchronous="NORMAL"), load_entry_points=False)
    assert synchronous(faster.engine) == 1
    faster.engine.dispose()
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        create_db_engine(f"sqlite:///{tmp_path / 'c.db'}", sqlite_synchronous="OFF")
