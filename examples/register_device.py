"""Register a phone's FCM registration token with the push server, the way a mobile
app does after login, and show what the server then sends to that phone.

A real app gets its token from the Firebase SDK (Android:
``FirebaseMessaging.getInstance().token``; iOS: ``Messaging.messaging().token``, or
``onNewToken`` / ``messaging(_:didReceiveRegistrationToken:)`` when it changes) and
POSTs it again whenever it changes: the same token registered again answers 200, and a
token belongs to the last user who registered it. On logout the app DELETEs it.

Against the demo (``make run``: its FCM is the embedded simulator's), from the project
folder::

    .venv/bin/python examples/register_device.py --password <demo password>

then place an order in the console with the app closed: the simulator records the
notification (``GET http://127.0.0.1:9100/_sim/fcm``), which this script prints.
"""
from __future__ import annotations

import argparse
import time
import uuid

import requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000")
    parser.add_argument("--username", default="demo")
    parser.add_argument("--password", required=True)
    parser.add_argument("--token", default=None, help="the FCM token (default: a made-up one)")
    parser.add_argument("--platform", default="android", choices=("android", "ios"))
    parser.add_argument("--simulator", default="http://127.0.0.1:9100",
                        help="the demo's simulator, to show what it received")
    parser.add_argument("--watch-s", type=float, default=60.0)
    args = parser.parse_args()

    login = requests.post(f"{args.url}/api/auth/login", timeout=10,
                          json={"username": args.username, "password": args.password})
    login.raise_for_status()
    auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
    token = args.token or f"demo-{uuid.uuid4().hex}:APA91b{uuid.uuid4().hex}"

    # 201 the first time, 200 when the token is known (it moves to this user)
    r = requests.post(f"{args.url}/api/devices", headers=auth, timeout=10,
                      json={"token": token, "platform": args.platform, "locale": "en"})
    r.raise_for_status()
    device = r.json()
    print(f"device {device['id']} registered ({r.status_code}): {device}")

    # what should reach the phone (all on by default)
    settings = requests.put(f"{args.url}/api/notifications/settings", headers=auth, timeout=10,
                            json={"fills": True, "price_alerts": True, "skip_when_online": True})
    print("settings:", settings.json())

    print(f"watching the simulator's FCM for {args.watch_s:.0f} s (place an order meanwhile)")
    seen = 0
    deadline = time.monotonic() + args.watch_s
    while time.monotonic() < deadline:
        got = requests.get(f"{args.simulator}/_sim/fcm", params={"token": token},
                           timeout=10).json()["messages"]
        for m in got[seen:]:
            n = m["message"]["notification"]
            print(f"notification: {n['title']} | {n['body']} | data={m['message']['data']}")
        seen = len(got)
        time.sleep(1)

    # on logout, an app removes its device so the phone stops getting notifications
    requests.delete(f"{args.url}/api/devices/{device['id']}", headers=auth, timeout=10)
    print("device removed")


if __name__ == "__main__":
    main()
