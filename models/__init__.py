"""SQLAlchemy 2.x typed models and the engine/session setup. Knows nothing of exchanges."""
from models.base import Base, Money, now_ms
from models.db import Database
from models.exchange_key import ExchangeKey
from models.notify import Alert, Device, Notification, NotificationSettings, PriceAlert
from models.protection import LIVE_LEG_STATUSES, LegKind, LegStatus, ProtectionLeg
from models.session import AuthSession, RefreshToken
from models.trade import (
    HOLDING_STATUSES,
    UNFINISHED_STATUSES,
    DeadLetter,
    Exit,
    ExitStatus,
    Fill,
    FundingFee,
    Order,
    Position,
    RealizedDay,
    Trade,
    TradeStatus,
)
from models.user import User

__all__ = ["Base", "Money", "now_ms", "Database", "User", "ExchangeKey", "Trade",
           "TradeStatus", "HOLDING_STATUSES", "UNFINISHED_STATUSES", "Order", "Fill",
           "Position", "Exit", "ExitStatus", "DeadLetter", "AuthSession", "RefreshToken",
           "FundingFee", "RealizedDay", "ProtectionLeg", "LegStatus", "LegKind",
           "LIVE_LEG_STATUSES", "Alert", "Device", "Notification", "NotificationSettings",
           "PriceAlert"]
