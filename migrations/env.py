"""Alembic environment: migrates the database named by ``DATABASE_URL``.

The URL comes from, in order: ``config.attributes["url"]`` (set by
``services.schema.upgrade``), ``-x url=...``, then ``config.load_config()``
(``DATABASE_URL`` or the demo SQLite file). Under ``APP_ENV=production`` only
``DATABASE_URL`` is needed; without it the command ends with one line naming it.
"""
from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from models import Base

target_metadata = Base.metadata

# From the command line (``alembic upgrade head``), alembic.ini's logging applies, so
# each migration run is printed ("Running upgrade 0004 -> 0005"); the server's own
# upgrade (services.schema, which passes a url or connection) keeps its logging.
_cfg = context.config
if _cfg.config_file_name and not ({"url", "connection"} & set(_cfg.attributes)):
    fileConfig(_cfg.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = context.config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return url
    import os

    from config import ConfigError, load_config
    if os.environ.get("APP_ENV") == "production":
        # migrating needs only the database: the server's other secrets may be absent
        if not os.environ.get("DATABASE_URL"):
            raise SystemExit("configuration error: APP_ENV=production needs DATABASE_URL "
                             "(the database to migrate)")
        return os.environ["DATABASE_URL"]
    try:
        return load_config().DATABASE_URL
    except ConfigError as e:  # one line on stderr and exit status 1, no traceback
        raise SystemExit(f"configuration error: {e}") from None


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
