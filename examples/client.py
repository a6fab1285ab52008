"""A small Socket.IO client: log in, subscribe to the account types, fills and alerts, print pushes.

    python examples/client.py --url http://127.0.0.1:5000 --username demo --password <from the log>

Uses python-socketio (installed by the project's requirements). The password is used
once: the session is then kept with the refresh token (POST /api/auth/refresh at 80 %
of the access token's lifetime; each refresh returns a new refresh token, the old one
stops working), and a reconnect presents the newest access token. Ctrl-C logs out.
"""
from __future__ import annotations

import _thread
import argparse
import json
import sys
import threading

import requests
import socketio

TYPES = ["balance", "positions", "pnl", "orders", "fills", "alerts"]
_out = threading.Lock()


def say(text: str, file=sys.stdout) -> None:  # type: ignore[no-untyped-def]
    """Print one event's lines at once: pushes arrive on python-socketio's thread and
    token refreshes on another, and their lines must not run together."""
    with _out:
        print(text, file=file, flush=True)


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
    session = Session(args.url, r.json())
    threading.Thread(target=session.keep_fresh, daemon=True).start()

    sio = socketio.Client(reconnection=True)

    def show(event: str):  # type: ignore[no-untyped-def]
        def handler(data):  # type: ignore[no-untyped-def]
            if isinstance(data, dict) and "data" in data:
                say(f"{event} seq={data['seq']} source={data['source']} stale={data['stale']} "
                    f"latency_ms={data['sent_at'] - data['as_of']}\n  {json.dumps(data['data'])}")
            else:
                say(f"{event} {json.dumps(data)}")
        return handler

    for event in (*TYPES, "stream_status", "error"):
        sio.on(event, show(event))

    @sio.event
    def connect_error(data):  # type: ignore[no-untyped-def]
        # {"message": "unauthorized", "data": {"code": "token_expired" | "invalid_token" |
        # "missing_token"}}: an expired access token is refreshed, the reconnect uses it
        code = ((data or {}).get("data") or {}).get("code") if isinstance(data, dict) else None
        say(f"connect_error {json.dumps(data)}", file=sys.stderr)
        if code == "token_expired":
            session.refresh()

    @sio.event
    def connect():  # type: ignore[no-untyped-def]
        # fills and alerts are events (a fill, a stop that fired, a margin call): what an
        # app most needs to show; the four account types are states
        payload = {"types": TYPES}
        if args.key_id:
            payload["key_id"] = args.key_id
        say(f"subscribe ack {sio.call('subscribe', payload, timeout=10)}")

    # auth as a callable: every (re)connect presents the newest access token
    sio.connect(args.url, auth=lambda: {"token": session.access_token}, transports=["websocket"])
    try:
        sio.wait()
    except KeyboardInterrupt:
        sio.disconnect()
        session.logout()


class Session:
    """The tokens of one login: ``access_token`` (short-lived) and the rotating
    ``refresh_token``; ``keep_fresh`` renews them before the access token expires."""

    def __init__(self, url: str, tokens: dict) -> None:
        self.url = url
        self._stop = threading.Event()
        self._set(tokens)

    def _set(self, tokens: dict) -> None:
        self.access_token = tokens["access_token"]
        self.refresh_token = tokens["refresh_token"]
        self.expires_in = int(tokens["expires_in"])

    def refresh(self) -> None:
        """Exchange the refresh token for a new pair. Stops the client when the session
        ended (401: logged out elsewhere, expired, or the token was used twice)."""
        r = requests.post(f"{self.url}/api/auth/refresh",
                          json={"refresh_token": self.refresh_token}, timeout=10)
        if r.status_code == 401:
            say(f"session ended ({r.json()['error']['code']}): log in again", file=sys.stderr)
            self._stop.set()
            _thread.interrupt_main()  # KeyboardInterrupt in the main thread: disconnect
            return
        r.raise_for_status()
        self._set(r.json())
        say(f"tokens refreshed; access token valid {self.expires_in} s")

    def keep_fresh(self) -> None:
        """Refresh at 80 % of each access token's lifetime (retry in 5 s on a network error)."""
        delay = self.expires_in * 0.8
        while not self._stop.wait(delay):
            try:
                self.refresh()
                delay = self.expires_in * 0.8
            except requests.RequestException as e:
                say(f"refresh failed ({e}); retrying in 5 s")
                delay = 5

    def logout(self) -> None:
        """End the session on the server (its refresh token stops working)."""
        self._stop.set()
        requests.post(f"{self.url}/api/auth/logout", json={"refresh_token": self.refresh_token},
                      timeout=10)


if __name__ == "__main__":
    main()
