"""Sessions for mobile apps: login, rotating refresh tokens, logout, session list.

- ``login`` checks the password (same answer and cost for an unknown user), opens a
  session and returns a short-lived access token (JWT carrying ``sid``) and a refresh
  token.
- ``refresh`` exchanges a refresh token for a new pair. The old token stops working
  (rotation). Presenting a token that was already rotated means two parties hold it
  (one of them stole it): the whole session is revoked (theft detection, OAuth 2.0
  Security BCP, RFC 9700 section 4.14.2). The rotation is a conditional UPDATE, so of
  two concurrent refreshes with one token exactly one wins and the other counts as
  reuse.
- An ended session's refresh token stops working at once; its access tokens live
  until their expiry (``JWT_EXPIRES_S``), no longer.

Refresh tokens are 32 random bytes (``secrets.token_urlsafe(32)``) stored only as
their SHA-256 hex digest (see ``models/session.py`` for why a fast hash suffices).
"""
from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select, update

from models import AuthSession, Database, RefreshToken, User, now_ms
from services.errors import NotFound, Unauthorized
from services.security import TokenService, verify_password

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenPair:
    """What login and refresh answer: ``expires_in`` and ``refresh_expires_in`` in
    seconds; ``session_id`` the session the pair belongs to."""

    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    session_id: int

    def body(self) -> dict:
        """The JSON answer of CONTRACT.md (``token_type`` Bearer)."""
        return {"access_token": self.access_token, "token_type": "Bearer",
                "expires_in": self.expires_in, "refresh_token": self.refresh_token,
                "refresh_expires_in": self.refresh_expires_in, "session_id": self.session_id}


def hash_token(token: str) -> str:
    """SHA-256 hex digest of a refresh token (what the database stores)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class SessionService:
    """Login sessions of one app.

    Args:
        db: the database.
        tokens: issues the access tokens.
        refresh_expires_s: lifetime of each refresh token, seconds (a session lives as
            long as it keeps being refreshed within that time).
    """

    def __init__(self, db: Database, tokens: TokenService, refresh_expires_s: int) -> None:
        self._db = db
        self._tokens = tokens
        self.refresh_expires_s = refresh_expires_s

    def authenticate(self, username: str, password: str) -> User:
        """The user whose password this is. Raises Unauthorized ``invalid_credentials``
        for a wrong password or an unknown user (same answer, same Argon2 cost)."""
        with self._db.session() as s:
            user = s.scalars(select(User).where(User.username == username)).first()
        if not verify_password(user.password_hash if user else None, password) or user is None:
            raise Unauthorized("invalid_credentials", "wrong username or password")
        return user

    def _new_refresh(self, s, session_id: int, now: int) -> str:  # type: ignore[no-untyped-def]
        token = secrets.token_urlsafe(32)
        s.add(RefreshToken(session_id=session_id, token_hash=hash_token(token), created_at=now,
                           expires_at=now + self.refresh_expires_s * 1000))
        return token

    def _pair(self, user: User, session_id: int, refresh: str) -> TokenPair:
        access = self._tokens.issue(user.id, user.is_admin, session_id=session_id)
        return TokenPair(access, self._tokens.expires_s, refresh, self.refresh_expires_s, session_id)

    def login(self, username: str, password: str, user_agent: str = "") -> TokenPair:
        """Check the password and open a session. Raises Unauthorized."""
        user = self.authenticate(username, password)
        now = now_ms()
        with self._db.transaction() as s:
            sess = AuthSession(user_id=user.id, user_agent=user_agent[:256], created_at=now,
                               last_used_at=now)
            s.add(sess)
            s.flush()
            refresh = self._new_refresh(s, sess.id, now)
        logger.info("session opened user_id=%s session_id=%s", user.id, sess.id)
        return self._pair(user, sess.id, refresh)

    def refresh(self, token: str) -> TokenPair:
        """A new access token and refresh token for ``token``, which stops working.
        Raises Unauthorized: ``invalid_refresh_token`` (unknown, expired, or its session
        ended) or ``refresh_token_reused`` (already rotated: the session is revoked)."""
        now = now_ms()
        digest = hash_token(token)
        with self._db.transaction() as s:
            row = s.scalars(select(RefreshToken).where(RefreshToken.token_hash == digest)).first()
            sess = s.get(AuthSession, row.session_id) if row is not None else None
            if row is None or sess is None or sess.revoked_at is not None or row.expires_at <= now:
                raise Unauthorized("invalid_refresh_token", "refresh token is invalid or expired")
            won = s.execute(update(RefreshToken).where(RefreshToken.id == row.id,
                                                       RefreshToken.rotated_at.is_(None))
                            .values(rotated_at=now)).rowcount == 1
            if won:
                sess.last_used_at = now
                refresh = self._new_refresh(s, sess.id, now)
                user = s.get(User, sess.user_id)
                # rotated tokens past their expiry answer "expired" anyway: no need to
                # keep them for reuse detection
                s.execute(delete(RefreshToken).where(RefreshToken.session_id == sess.id,
                                                     RefreshToken.rotated_at.is_not(None),
                                                     RefreshToken.expires_at <= now))
        if not won:
            self._revoke(sess.id, "reuse")
            logger.warning("refresh token reused: session revoked user_id=%s session_id=%s",
                           sess.user_id, sess.id)
            raise Unauthorized("refresh_token_reused",
                               "refresh token was already used; the session has been ended")
        if user is None:
            raise Unauthorized("invalid_refresh_token", "refresh token is invalid or expired")
        return self._pair(user, sess.id, refresh)

    def _revoke(self, session_id: int, reason: str) -> bool:
        with self._db.transaction() as s:
            return s.execute(update(AuthSession).where(AuthSession.id == session_id,
                                                       AuthSession.revoked_at.is_(None))
                             .values(revoked_at=now_ms(), revoked_reason=reason)).rowcount == 1

    def logout(self, refresh_token: str | None, session_id: int | None) -> None:
        """End the session of ``refresh_token`` (if it names one), else session
        ``session_id`` (from the access token). Unknown tokens end nothing (no error:
        logging out twice is fine)."""
        if refresh_token is not None:
            with self._db.session() as s:
                row = s.scalars(select(RefreshToken).where(
                    RefreshToken.token_hash == hash_token(refresh_token))).first()
            session_id = row.session_id if row is not None else None
        if session_id is not None and self._revoke(session_id, "logout"):
            logger.info("session ended session_id=%s reason=logout", session_id)

    def list(self, user_id: int) -> list[AuthSession]:
        """The user's live sessions (not ended, refreshed within the refresh lifetime),
        newest first."""
        cutoff = now_ms() - self.refresh_expires_s * 1000
        with self._db.session() as s:
            return list(s.scalars(select(AuthSession).where(
                AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None),
                AuthSession.last_used_at > cutoff).order_by(AuthSession.id.desc())))

    def end(self, user_id: int, session_id: int) -> None:
        """End one of the user's sessions. Raises NotFound (also for another user's)."""
        with self._db.session() as s:
            sess = s.get(AuthSession, session_id)
        if sess is None or sess.user_id != user_id or sess.revoked_at is not None:
            raise NotFound("session_not_found", f"no session {session_id}", "session_id")
        self._revoke(session_id, "deleted")
        logger.info("session ended user_id=%s session_id=%s reason=deleted", user_id, session_id)
