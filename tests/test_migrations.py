"""Migrations build the models' schema from empty, on MariaDB and on SQLite, with no drift."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from service.config import Settings
from service.db import REPO_ROOT, migrate
from tests.support import Backends, fresh_database, sync_url


def _alembic_config(database_url: str) -> Config:
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.attributes["settings"] = Settings(database_url=database_url)
    config.attributes["configure_logger"] = False
    return config


@pytest.mark.parametrize("kind", ["test database", "sqlite"])
def test_upgrade_from_empty_to_head_has_no_drift(kind: str, backends: Backends, tmp_path: Path) -> None:
    server = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}" if kind == "sqlite" else backends.database_server_url
    database_url, drop = fresh_database(server, tmp_path)
    try:
        engine = sa.create_engine(sync_url(database_url))
        assert sa.inspect(engine).get_table_names() == []
        migrate(Settings(database_url=database_url))
        inspector = sa.inspect(engine)
        assert {"job", "job_event", "alembic_version"} <= set(inspector.get_table_names())
        assert inspector.get_pk_constraint("job_event")["constrained_columns"] == ["job_id", "seq"]
        # Raises if the models and the migrated schema differ in any table, column, type or index.
        command.check(_alembic_config(database_url))
        with engine.connect() as connection:
            version = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
        engine.dispose()
        assert version == ScriptDirectory.from_config(_alembic_config(database_url)).get_current_head()
    finally:
        drop()


def test_timestamps_keep_microseconds_on_the_test_database(backends: Backends, tmp_path: Path) -> None:
    database_url, drop = fresh_database(backends.database_server_url, tmp_path)
    try:
        migrate(Settings(database_url=database_url))
        engine = sa.create_engine(sync_url(database_url))
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO job (id, status, playbook, source, extra_vars, tags, skip_tags, `check`,"
                    " diff,"
                    " verbosity, priority, labels, created_at, event_count, cancel_requested) VALUES"
                    " ('x', 'queued', 'p.yml', '{}', '{}', '[]', '[]', 0, 0, 0, 'default', '{}',"
                    " '2026-01-02 03:04:05.123456', 0, 0)"
                )
            )
            stored = connection.execute(sa.text("SELECT created_at FROM job")).scalar_one()
        engine.dispose()
        assert str(stored).endswith(".123456")
    finally:
        drop()
