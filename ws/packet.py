"""The Socket.IO packet class the server uses: python-socketio's own, with a faster
check for binary attachments and orjson as its JSON module.

python-socketio walks every emitted payload to find ``bytes`` before encoding it
(``Packet.data_is_binary``), recursively and building a list per level; for an
``orders`` push of a busy account that walk cost about as much as the JSON encoding
(profile of ``bench.ledger``). This one walks the same values with an explicit stack
and stops at the first binary value; the result is the same.

JSON: python-socketio encodes each packet with its class's ``json`` module
(``json.dumps(data, separators=(',', ':'))``); the stdlib encoder took a fifth of the
server's CPU at 1,000 subscribed users (py-spy profile of ``bench.fanout``), and
orjson encodes the same envelope about ten times faster, already compact. A value
orjson refuses (an integer beyond 64 bits) is encoded by the stdlib instead, so the
output is the same JSON either way.
"""
from __future__ import annotations

import json

import orjson
from socketio import packet


class OrjsonCodec:
    """The ``dumps``/``loads`` pair python-socketio calls (``Packet.json``): orjson,
    falling back to the stdlib for what orjson cannot encode. ``dumps`` returns
    ``str`` (the packet is text); ``loads`` raises ValueError on invalid JSON, as
    the stdlib's does."""

    @staticmethod
    def dumps(obj, **kwargs) -> str:  # type: ignore[no-untyped-def]
        """Compact JSON text of ``obj`` (dict keys that are not strings become
        strings, as with the stdlib); ``kwargs`` are the stdlib's, used only by the
        fallback."""
        try:
            return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # orjson.JSONEncodeError: e.g. an int beyond 64 bits
            return json.dumps(obj, **kwargs)

    @staticmethod
    def loads(text, **kwargs):  # type: ignore[no-untyped-def]
        """The value of JSON ``text`` (str or bytes); raises ValueError if invalid."""
        return orjson.loads(text)


class Packet(packet.Packet):
    """``socketio.packet.Packet`` with an iterative ``data_is_binary`` and orjson."""

    json = OrjsonCodec

    @classmethod
    def data_is_binary(cls, data) -> bool:  # type: ignore[no-untyped-def, override]
        """True if ``data`` holds ``bytes``/``bytearray`` anywhere in its lists and
        dict values (the same rule as python-socketio's)."""
        stack = [data]
        while stack:
            item = stack.pop()
            if isinstance(item, (bytes, bytearray)):
                return True
            if isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())
        return False
