"""A small Socket.IO client: log in, subscribe to the four account types, print pushes.

    python examples/client.py --url http://127.0.0.1:5000 --username demo --password <from the log>

Uses python-socketio (installed by the project's requirements).
"""
from __future__ import annotations

import argparse
import json
import sys

import requests
import socketio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000")
    parser.add_argument("--username", default="demo")
    parser.add_argument("--password", required=True)
    parser.add_argument("--key-id", type=int, default=None)
    args = parser.parse_args()

    r = requests.post(f"{args.url}/api/auth/login",
                      json={"username": args.username, "password": args.password}, timeout=10)
    if r.status_code != 200:
        sys.exit(f"login failed: {r.status_code} {r.text}")
    token = r.json()["access_token"]

    sio = socketio.Client(reconnection=True)

    def show(event: str):  # type: ignore[no-untyped-def]
        def handler(data):  # type: ignore[no-untyped-def]
            if isinstance(data, dict) and "data" in data:
                print(f"{event} seq={data['seq']} source={data['source']} stale={data['stale']} "
                      f"latency_ms={data['sent_at'] - data['as_of']}")
                print("  " + json.dumps(data["data"]))
            else:
                print(f"{event} {json.dumps(data)}")
        return handler

    for event in ("balance", "positions", "pnl", "orders", "stream_status", "error"):
        sio.on(event, show(event))

    @sio.event
    def connect():  # type: ignore[no-untyped-def]
        payload = {"types": ["balance", "positions", "pnl", "orders"]}
        if args.key_id:
            payload["key_id"] = args.key_id
        print("subscribe ack", sio.call("subscribe", payload, timeout=10))

    sio.connect(args.url, auth={"token": token}, transports=["websocket"])
    try:
        sio.wait()
    except KeyboardInterrupt:
        sio.disconnect()


if __name__ == "__main__":
    main()
