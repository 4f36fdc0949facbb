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
# argon2id cost profiles. "standard" is argon2-cffi's default (RFC 9106 low-memory: 3 passes over 64 MiB);
# "test" exists so a test suite can create and log in 50 labelers in seconds, and must not be used otherwise.
# A hash records its own parameters, so verifying works whatever profile made it.
PROFILES = {"standard": {}, "test": {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}}
_state: dict = {}


def set_hash_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"password hash profile {profile!r}: one of {sorted(PROFILES)}")
    hasher = PasswordHasher(**PROFILES[profile])
    # Verified against when the username is unknown, so a wrong username costs as long as a wrong password.
    _state.update(hasher=hasher, dummy=hasher.hash(secrets.token_urlsafe(16)))


def hash_password(password: str) -> str:
    if not _state:
        set_hash_profile("standard")
    return _state["hasher"].hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if not _state:
        set_hash_profile("standard")
    try:
        return _state["hasher"].verify(password_hash or _state["dummy"], password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_secret(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(token_digest(given), token_digest(expected))
