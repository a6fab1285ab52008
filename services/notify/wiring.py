"""The notification services of one app, built and started together
(``services.container`` keeps them as ``Services.notify``)."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models import Database
from services.notify.alerts import AlertService
from services.notify.devices import DeviceService
from services.notify.fcm import FcmClient, FcmConfig
from services.notify.outbox import Outbox
from services.notify.presence import FLUSH_S, LocalDeliveries, RedisDeliveries
from services.notify.price_alerts import RELOAD_S as PRICE_ALERTS_RELOAD_S
from services.notify.price_alerts import PriceAlertService
from services.notify.standby import StandbyStreams
from services.notify.worker import NotifyWorker

logger = logging.getLogger(__name__)

NEW_FILLS_HOOK = "on_new_fills"  # Session.info key the ledger calls (services.ledger)


@dataclass
class Notify:
    """Devices, settings, alerts, price alerts, the outbox and its worker."""

    outbox: Outbox
    deliveries: Any
    alerts: AlertService
    devices: DeviceService
    price_alerts: PriceAlertService
    worker: NotifyWorker
    fcm: FcmClient | None
    standby: StandbyStreams | None = None  # set by the container once the streams exist

    def start(self, spawn: Callable[..., Any]) -> None:
        """Start the worker, the price alert loop and (with a message queue) the loop
        that writes this process's socket deliveries to Redis (``spawn(name, fn)``)."""
        spawn("notify worker", self.worker.run)
        spawn("price alerts", self.price_alerts.run)
        if self.standby is not None:
            spawn("notify standby", self.standby.run)
        if isinstance(self.deliveries, RedisDeliveries):
            spawn("notify deliveries", self._flush_deliveries)

    def _flush_deliveries(self) -> None:
        """Every ``FLUSH_S``: deliveries to Redis, so that another process's worker
        knows them within its grace (``NOTIFY_ONLINE_GRACE_MS``) however busy this
        process's worker is."""
        while not self.worker.stopping.wait(FLUSH_S):
            try:
                self.deliveries.flush()
            except Exception:  # isolation boundary: the next flush tries again
                logger.exception("deliveries flush failed")

    def stop(self) -> None:
        """Ask the loops to end."""
        self.worker.stop()
        self.price_alerts.stop()
        if self.standby is not None:
            self.standby.stop()

    def close(self) -> None:
        """Close the FCM HTTP session."""
        if self.fcm is not None:
            self.fcm.close()

    def stats(self) -> dict:
        """``/admin/stats`` ``notifications``: the worker's figures, outbox rows
        written, alerts raised, price alerts and deliveries observed."""
        return {**self.worker.stats(), "written": self.outbox.written,
                "alerts_raised": self.alerts.raised,
                "deliveries_observed": self.deliveries.observed,
                "price_alerts": self.price_alerts.stats(),
                **({"standby": self.standby.stats()} if self.standby is not None else {})}


def fcm_client(credentials_path: str | None, url: str, timeout_s: float) -> FcmClient | None:
    """The FCM client, or None (logged once) when ``GOOGLE_APPLICATION_CREDENTIALS`` is
    not set or not a usable service-account file: notifications are then kept and
    marked ``not_configured``."""
    if not credentials_path:
        logger.warning("notifications not configured: GOOGLE_APPLICATION_CREDENTIALS is not "
                       "set; they are kept as not_configured")
        return None
    if not os.path.isfile(credentials_path):
        logger.warning("notifications not configured: GOOGLE_APPLICATION_CREDENTIALS names "
                       "no file; they are kept as not_configured")
        return None
    try:
        client = FcmClient(FcmConfig(credentials_path, url, timeout_s))
    except ImportError:  # google-auth missing (requirements.txt names it)
        logger.warning("notifications not configured: google-auth is not installed; they "
                       "are kept as not_configured")
        return None
    except (ValueError, KeyError, OSError) as e:
        logger.warning("notifications not configured: the service account file is not usable "
                       "(%s); they are kept as not_configured", type(e).__name__)
        return None
    logger.info("notifications configured project_id=%s fcm_url=%s", client.project_id, url)
    return client


def build_notify(db: Database, *, publish: Callable[[dict], None], tickers: Any,
                 check_symbol: Callable[[int, str, str], None], spawn: Callable[..., Any],
                 sleep: Callable[[float], None], credentials_path: str | None, fcm_url: str,
                 timeout_s: float, grace_ms: int, concurrency: int,
                 queue_url: str | None, channel: str,
                 price_alerts_reload_s: float = PRICE_ALERTS_RELOAD_S) -> Notify:
    """Build the notification services; the ledger's sessions get the outbox's fill
    hook (``Session.info[NEW_FILLS_HOOK]``)."""
    outbox = Outbox(grace_ms)
    db.session.configure(info={NEW_FILLS_HOOK: outbox.add_fills})
    deliveries = RedisDeliveries(queue_url, channel) if queue_url else LocalDeliveries()
    alerts = AlertService(db, outbox, publish)
    fcm = fcm_client(credentials_path, fcm_url, timeout_s)
    worker = NotifyWorker(db, fcm, deliveries, outbox.wake, sleep, spawn, concurrency)
    prices = PriceAlertService(db, alerts.raise_alert, tickers, check_symbol, sleep,
                               price_alerts_reload_s)
    return Notify(outbox, deliveries, alerts, DeviceService(db), prices, worker, fcm)
