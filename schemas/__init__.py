"""Schemas both transports use, and the response shapes (pydantic v2).

Neutral ground between ``api/`` (REST) and ``ws/`` (Socket.IO): this package imports
pydantic, the standard library and ``services.serialize`` (the decimal-string
rule), never Flask, Socket.IO, the database or an exchange.

- ``schemas.fields``: the input rules (id range, decimal and credential patterns,
  text without control characters) and the annotated field types built on them.
- ``schemas.requests``: REST request bodies and the Socket.IO ticker payload.
- ``schemas.socketio``: the Socket.IO ``subscribe`` / ``unsubscribe`` payloads.
- ``schemas.responses``: every REST success body and the error body; the handlers
  serialize through them and ``api/openapi.py`` documents them.
"""
