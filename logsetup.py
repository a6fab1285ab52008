"""Log output of the server, the same under ``python app.py`` and under gunicorn.

``LOG_FORMAT=plain`` (default): ``2026-12-02 10:00:00,123 INFO app listening
url=http://127.0.0.1:5000 env=demo``, the messages being ``event key=value ...``.
``LOG_FORMAT=json``: one JSON object a line, for log shippers::

    {"time": 1764669600123, "level": "INFO", "logger": "app", "pid": 4711,
     "message": "listening url=http://127.0.0.1:5000 env=demo",
     "fields": {"url": "http://127.0.0.1:5000", "env": "demo"}}

``time`` is integer milliseconds UTC; ``fields`` holds the message's ``key=value``
pairs (values as strings); ``exc`` the traceback when one was logged. ``LOG_LEVEL``
(default ``INFO``) applies to the app's loggers and gunicorn's error log alike.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LOG_FORMATS = ("plain", "json")
_PAIR = re.compile(r"(?:^|\s)([A-Za-z_][\w.]*)=(\S*)")


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for its keys)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single JSON line."""
        message = record.getMessage()
        out: dict[str, Any] = {"time": int(record.created * 1000), "level": record.levelname,
                               "logger": record.name, "pid": record.process, "message": message}
        fields = dict(_PAIR.findall(message))
        if fields:
            out["fields"] = fields
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def dict_config(fmt: str = "plain", level: str = "INFO") -> dict:
    """A ``logging.config.dictConfig`` mapping: every logger (the app's, gunicorn's
    ``gunicorn.error``/``gunicorn.access``) writes to stdout in ``fmt``. Raises
    ValueError for a format other than ``plain``/``json``."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    formatter = ({"()": "logsetup.JsonFormatter"} if fmt == "json"
                 else {"format": PLAIN_FORMAT})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"app": formatter},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "app",
                                "stream": "ext://sys.stdout"}},
        "root": {"level": level.upper(), "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["stdout"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
            "alembic": {"level": "WARNING"},
        },
    }


def configure(fmt: str = "plain", level: str = "INFO") -> None:
    """Apply :func:`dict_config` to this process."""
    import logging.config
    logging.config.dictConfig(dict_config(fmt, level))
