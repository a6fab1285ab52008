"""Notifications to phones (CONTRACT.md third round, "Notifications to phones", and the
``alerts`` push type): devices and settings, the durable ``alerts`` events, the
notification outbox written in the transaction of its event, the FCM HTTP v1 client
and the worker that sends the outbox, price alerts on the shared market streams, and
the record of which events a socket received (``skip_when_online``).

No Flask or Socket.IO here: pushes go through the ``publish`` callable the container
gives, deliveries are reported by the push hub through ``Deliveries.observe``.
"""
