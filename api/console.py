"""The web console: ``GET /`` (``web/index.html``) and ``GET /static/<path>`` (``web/``).

Plain files, no build step. ``app.py`` creates Flask with ``static_folder=None``;
this blueprint serves them instead. ``send_from_directory`` refuses paths that
leave ``web/`` (404).
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

WEB_DIR = Path(__file__).resolve().parents[1] / "web"

bp = Blueprint("console", __name__)


def _send(filename: str) -> Response:
    # no-cache = revalidate each time (ETag / Last-Modified make that a cheap 304),
    # so a server upgrade never leaves an old console.js next to a new index.html
    resp = send_from_directory(WEB_DIR, filename)
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/")
def index() -> Response:
    """200 the console page."""
    return _send("index.html")


@bp.get("/static/<path:filename>")
def static(filename: str) -> Response:
    """200 a file of ``web/`` (script, style sheet, vendored Socket.IO client); 404 else."""
    return _send(filename)
