"""Dashboard sign-in sessions, stored so that every server of a deployment knows them and a
sign-out ends one everywhere.

A browser holds a random token in an HttpOnly cookie; the table keeps only its SHA-256, so a
copy of the database (a backup, a replica) opens no session. Each session carries its own CSRF
token, which the dashboard's script sends back with every change.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from ..storage import Tx


@dataclass(frozen=True)
class Session:
    actor: str
    role: str
    csrf: str
    expires_at: int


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(tx: Tx, actor: str, role: str, now: int, ttl_ms: int) -> tuple[str, Session]:
    """A new session: (the cookie's token, the session). Expired ones go at the same time."""
    token = secrets.token_urlsafe(32)
    session = Session(actor, role, secrets.token_urlsafe(24), now + ttl_ms)
    tx.exec("delete_expired_sessions", now=now)
    tx.exec("insert_session", token_hash=token_hash(token), actor=actor, role=role,
            csrf=session.csrf, now=now, expires_at=session.expires_at)
    return token, session


def find(tx: Tx, token: str, now: int) -> Session | None:
    row = tx.one("find_session", token_hash=token_hash(token), now=now)
    return None if row is None else Session(row["actor"], row["role"], row["csrf"],
                                            int(row["expires_at"]))


def delete(tx: Tx, token: str) -> bool:
    return tx.exec("delete_session", token_hash=token_hash(token)) > 0
