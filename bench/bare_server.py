"""The bare Flask-SocketIO/eventlet server of ``bench.fanout``: the floor the product's
push path is compared with, on the same library versions (the project's venv).

    python -m bench.bare_server --port P [--max-size 20000] [--json orjson|stdlib]

It accepts any connection (no auth check), acks ``subscribe`` with ``{"ok": true}``,
and on ``POST /rounds {"rate", "rounds", "k0", "pad"[, "start", "mix"]}`` runs ``rounds``
rounds, round ``j`` scheduled at ``start + j / rate`` (``start``: epoch seconds, so that
several bare processes run their rounds at the same times; default 50 ms from now): one
``pnl`` event to every connected client in connect order, each a fresh dict of about 500 bytes of JSON shaped like the product's
``pnl`` envelope, carrying ``round`` (``k0 + j``), ``t0`` (the round's scheduled start,
ms; a round that starts late because the previous one overran keeps its scheduled
time, as a price move happens at its time whatever the server is doing) and
``sent_at`` (ms, at the emit), with ``socketio.sleep(0)`` after each emit (yielding to
the other green threads, as the product does). With ``"mix": true`` a client also gets
the other account pushes the product sends per mark price move at R = 2 with its
defaults (``positions`` at 1 Hz, ``balance`` at 0.5 Hz): every even round, once every
client has its ``pnl``, a ``positions`` message to each, and every fourth round a
``balance`` one (the product, too, hands a tick's ``pnl`` pushes out first), 1.75
messages a round as the product's ``pnl`` costs (``bench.scaleout``), yielding every
2 ms as the product's tick delivery does, not after each emit. ``GET /stats`` answers the number of
connections and rounds done. eventlet's ``max_size`` (concurrent connections) is
raised from its default of 1,024.

JSON (``--json``): ``orjson`` (the default) encodes every packet with the project's own
codec, ``ws.packet.OrjsonCodec``, set as python-socketio's ``Packet.json`` through a
packet class given as ``serializer``, exactly as ``app.py`` does with ``ws.packet.Packet``
(the bare class keeps python-socketio's own ``data_is_binary``: only the encoder is the
project's); ``stdlib`` keeps python-socketio's default (``json.dumps`` with compact
separators), the variant ``bench.fanout`` compared against before.
"""
from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import functools  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from flask import Flask, jsonify, request  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402
from socketio import packet  # noqa: E402

from ws.packet import OrjsonCodec  # noqa: E402


class OrjsonPacket(packet.Packet):  # type: ignore[misc]
    """python-socketio's packet with the project's JSON codec (orjson)."""

    json = OrjsonCodec


YIELD_EVERY_S = 0.002  # the product's tick delivery yields this often (services.tickers)

app = Flask(__name__)
socketio: SocketIO = None  # made by make_socketio() in main()
sids: dict[str, int] = {}  # insertion order = connect order
done = {"rounds": 0, "late_rounds": 0, "max_round_s": 0.0}


def on_connect(auth=None):  # type: ignore[no-untyped-def]
    sids[request.sid] = len(sids)


def on_disconnect(*_args):  # type: ignore[no-untyped-def]
    sids.pop(request.sid, None)


def on_subscribe(data=None):  # type: ignore[no-untyped-def]
    types = (data or {}).get("types") if isinstance(data, dict) else None
    return {"ok": True, "subscribed": types or []}


def message(i: int, k: int, t0_ms: int, pad: str) -> dict[str, Any]:
    """One client's round-``k`` message (about 500 bytes of JSON with the default pad)."""
    upnl = f"{(k % 1000) * 0.01:.8f}"
    return {"type": "pnl", "user_id": i, "key_id": i, "exchange": "binance", "testnet": False,
            "seq": k, "as_of": t0_ms, "sent_at": int(time.time() * 1000), "source": "stream",
            "stale": False, "round": k, "t0": t0_ms,
            "data": {"unrealized_pnl": upnl, "realized_pnl": "0.00000000",
                     "positions": [{"symbol": "XRPUSDT", "side": "LONG", "unrealized_pnl": upnl,
                                    "roe_pct": "1.23"}]},
            "pad": pad}


def side_message(kind: str, i: int, k: int, t0_ms: int, pad: str) -> dict[str, Any]:
    """A ``positions`` (data: a list of rows) or ``balance`` (data: an object) message
    of about the size of the ``pnl`` one, shaped like the product's envelopes; it has
    no ``round``: the clients time only the ``pnl``."""
    upnl = f"{(k % 1000) * 0.01:.8f}"
    if kind == "positions":
        data: object = [{"symbol": "XRPUSDT", "side": "LONG", "size": "10", "entry_price": "0.5",
                         "mark_price": "0.51", "unrealized_pnl": upnl, "leverage": "10"}]
    else:
        data = {"asset": "USDT", "wallet_balance": "10000.00000000", "unrealized_pnl": upnl,
                "available_balance": "9990.00000000"}
    return {"type": kind, "user_id": i, "key_id": i, "exchange": "binance", "testnet": False,
            "seq": k, "as_of": t0_ms, "sent_at": int(time.time() * 1000), "source": "stream",
            "stale": False, "data": data, "pad": pad}


def emit_all(clients: list[tuple[str, int]], build: Callable[[int], dict[str, Any]], by_time: bool) -> None:
    """Emit ``build(i)`` to every client, yielding to the other green threads after
    each emit or (``by_time``) every ``YIELD_EVERY_S``, as the product's tick delivery
    does (``services.tickers``)."""
    last = time.monotonic()
    for sid, i in clients:
        msg = build(i)
        socketio.emit(msg["type"], msg, to=sid)
        if not by_time or time.monotonic() - last >= YIELD_EVERY_S:
            socketio.sleep(0)
            last = time.monotonic()


def run_rounds(rate: float, rounds: int, k0: int, pad: str, start: float | None = None,
               mix: bool = False) -> None:
    start = start if start is not None else time.time() + 0.05
    for j in range(rounds):
        scheduled = start + j / rate
        wait = scheduled - time.time()
        if wait > 0:
            socketio.sleep(wait)
        else:
            done["late_rounds"] += 1
        t_begin = time.time()
        t0_ms = int(scheduled * 1000)
        clients = list(sids.items())
        emit_all(clients, functools.partial(message, k=k0 + j, t0_ms=t0_ms, pad=pad), mix)
        for name in [name for name, every in (("positions", 2), ("balance", 4)) if mix and j % every == 0]:
            emit_all(clients, functools.partial(side_message, name, k=k0 + j, t0_ms=t0_ms, pad=pad), True)
        done["rounds"] += 1
        done["max_round_s"] = max(done["max_round_s"], time.time() - t_begin)


@app.post("/rounds")
def rounds():  # type: ignore[no-untyped-def]
    body = request.get_json()
    start = body.get("start")
    socketio.start_background_task(run_rounds, float(body["rate"]), int(body["rounds"]),
                                   int(body["k0"]), "x" * int(body.get("pad", 120)),
                                   float(start) if start is not None else None, bool(body.get("mix")))
    return jsonify({"ok": True})


@app.get("/stats")
def stats():  # type: ignore[no-untyped-def]
    return jsonify({"connections": len(sids), **done})


def make_socketio(json_kind: str) -> SocketIO:
    """The server's SocketIO, with the project's orjson codec (``"orjson"``) or
    python-socketio's stdlib default (``"stdlib"``); handlers registered."""
    kw = {"serializer": OrjsonPacket} if json_kind == "orjson" else {}
    sio = SocketIO(app, async_mode="eventlet", cors_allowed_origins="*", **kw)
    sio.on_event("connect", on_connect)
    sio.on_event("disconnect", on_disconnect)
    sio.on_event("subscribe", on_subscribe)
    return sio


def main() -> None:
    global socketio
    p = argparse.ArgumentParser(prog="python -m bench.bare_server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-size", type=int, default=20000, help="eventlet max concurrent connections")
    p.add_argument("--json", choices=("orjson", "stdlib"), default="orjson",
                   help="packet JSON: the project's orjson codec or python-socketio's stdlib default")
    args = p.parse_args()
    socketio = make_socketio(args.json)
    print(f"bare server listening port={args.port} json={args.json}", flush=True)
    socketio.run(app, host=args.host, port=args.port, max_size=args.max_size, log_output=False)


if __name__ == "__main__":
    main()
