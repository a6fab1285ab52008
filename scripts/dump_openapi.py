"""Write the served OpenAPI document to ``docs/openapi.json`` (``make docs``).

The document is built exactly as ``GET /api/openapi.json`` builds it
(``api.openapi.build_spec`` on an app from ``create_app``), on a throw-away
migrated SQLite file with nothing started against an exchange.
``tests/server/test_docs.py`` fails when the committed file differs from it.

Usage: ``python scripts/dump_openapi.py [--check] [PATH]`` (``--check``: exit 1
when PATH differs, write nothing).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = ROOT / "docs" / "openapi.json"


def render() -> str:
    """The app's OpenAPI document as indented JSON text (trailing newline)."""
    sys.path.insert(0, str(ROOT))
    from cryptography.fernet import Fernet

    from api.openapi import build_spec
    from app import create_app
    from config import load_config
    from services import schema

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'docs.sqlite3'}"
        schema.upgrade(url)  # the services' start-up recovery reads the tables
        cfg = load_config({"APP_ENV": "production", "DATABASE_URL": url, "SECRET_KEY": "x",
                           "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(), "ADMIN_TOKEN": "x"})
        app = create_app(cfg.with_overrides({"ASYNC_MODE": "threading", "RECONCILE_INTERVAL_S": 0}))
        try:
            spec = build_spec(app)
        finally:
            app.extensions["pushsrv"].stop()
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the document; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        same = args.path.is_file() and args.path.read_text() == text
        print(f"{args.path}: {'up to date' if same else 'differs: run make docs'}")
        return 0 if same else 1
    args.path.write_text(text)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
