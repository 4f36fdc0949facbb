"""Credentials: argon2id password hashes (argon2-cffi), random session tokens stored as SHA-256 digests (a stolen
database opens no session), per-session CSRF tokens, and the admin token compared in constant time.

State-changing requests made with the session cookie must carry the session's CSRF token in `X-CSRF-Token`; a
cross-site page can neither read that token nor set a custom header without a CORS preflight this app never
grants. The cookie is also HttpOnly and SameSite=Strict. The admin may instead send `Authorization: Bearer TOKEN`
(no cookie, so nothing for another site to ride on).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

COOKIE = "prefer_session"
CSRF_HEADER = "X-CSRF-Token"
_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile
# Verified against when the username is unknown, so a wrong username costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_secret(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(token_digest(given), token_digest(expected))
