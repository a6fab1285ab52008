"""Command-line support of ``flask --app app``: ``generate-keys``, which needs no
configuration, and a clear one-line error instead of a traceback when the
environment cannot configure a server (e.g. ``APP_ENV=production`` without
``SECRET_KEY``). ``app.create_app`` returns :func:`config_error_app` in those cases.
"""
from __future__ import annotations

from flask import Flask

from config import ConfigError


def under_flask_cli() -> bool:
    """True when the ``flask`` command line is loading the app (a click context is
    active); gunicorn and ``python app.py`` have none."""
    import click
    return click.get_current_context(silent=True) is not None


def generate_keys_command():  # type: ignore[no-untyped-def]
    """``generate-keys``: fresh SECRET_KEY, KEY_ENCRYPTION_KEY (Fernet) and ADMIN_TOKEN
    as ``NAME=value`` lines (append them to ``.env``). Needs no configuration."""
    import secrets

    import click
    from cryptography.fernet import Fernet

    @click.command("generate-keys", help="Print fresh SECRET_KEY, KEY_ENCRYPTION_KEY (Fernet) "
                                         "and ADMIN_TOKEN lines for the environment file.")
    def generate_keys() -> None:
        click.echo(f"SECRET_KEY={secrets.token_urlsafe(48)}")
        click.echo(f"KEY_ENCRYPTION_KEY={Fernet.generate_key().decode()}")
        click.echo(f"ADMIN_TOKEN={secrets.token_urlsafe(32)}")
    return generate_keys


def config_error_app(error: ConfigError | None) -> Flask:
    """What ``flask --app app`` gets for ``generate-keys`` (``error`` None) or when the
    environment cannot configure a server: ``generate-keys`` works; every other
    command stops with the configuration error (exit status 1, no traceback)."""
    import click
    from flask.cli import AppGroup

    generate_keys = generate_keys_command()

    class _Commands(AppGroup):
        def list_commands(self, ctx):  # type: ignore[no-untyped-def]
            return [generate_keys.name]

        def get_command(self, ctx, name):  # type: ignore[no-untyped-def]
            if name == generate_keys.name:
                return generate_keys

            def refuse() -> None:
                raise click.ClickException(f"configuration error: {error}")
            return click.Command(name, callback=refuse, context_settings={
                "ignore_unknown_options": True, "allow_extra_args": True})

    app = Flask(__name__, static_folder=None)
    app.cli = _Commands(app.name)
    return app
