"""Schemas both transports use, and the response shapes (pydantic v2).

Neutral ground between ``api/`` (REST) and ``ws/`` (Socket.IO), inside ``services/`` as
DESIGN.md's layout wants (``api``, ``ws`` -> ``services``): this package imports
pydantic, the standard library and the venue registry (``exchanges.venues``);
``services.schemas.responses`` also reads the decimal-string rule
(``services.serialize.dec``) and the trade-status enum (``models.TradeStatus``), and
``services.schemas.socketio`` the account kinds (``services.account_kinds``, standard
library only).
Never Flask, Socket.IO, a database session or an exchange client.

- ``services.schemas.fields``: the input rules (id range, decimal and credential patterns,
  text without control characters) and the annotated field types built on them.
- ``services.schemas.requests``: REST request bodies and the Socket.IO ticker payload.
- ``services.schemas.socketio``: the Socket.IO ``subscribe`` / ``unsubscribe`` payloads.
- ``services.schemas.out``: the response models' base class and wire types.
- ``services.schemas.envelopes``: the account envelope (REST snapshots and pushes).
- ``services.schemas.responses``: every REST success body and the error body; the handlers
  serialize through them and ``api/openapi.py`` documents them.
"""
