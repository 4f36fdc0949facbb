"""Credentials: argon2id password hashes (argon2-cffi), random session tokens stored as SHA-256 digests (a stolen
database opens no session), per-session CSRF tokens, and the admin token compared in constant time.

State-changing requests made with the session cookie must carry the session's CSRF token in `X-CSRF-Token`; a
cross-site page can neither read that token nor set a custom header without a CORS preflight this app never
grants. The cookie is also HttpOnly and SameSite=Strict. The admin may instead send `Authorization: Bearer TOKEN`
(no cookie, so nothing for another site to ride on).

Sessions end after an idle time and after an absolute lifetime; an admin session also ends when the server is
restarted with another admin token (it records `admin_key(token)`, a slow salted digest, never the token). Failed
logins back off per username, per client address and, for the admin token, per client address (`LoginBackoff`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass

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


def admin_key(token: str) -> str:
    """What an admin session records of the token it was opened with: scrypt (16 MiB, ~50 ms, once per server
    start), so a copy of the database is no cheap way to test guesses of the token."""
    salt = b"prefer-labeling-admin-session"  # dklen 32: 64 hex characters, what sessions.admin_key holds
    return hashlib.scrypt(token.encode("utf-8"), salt=salt, n=2**14, r=8, p=1, dklen=32).hex()


@dataclass(frozen=True)
class BackoffPolicy:
    free: int  # failures allowed before any wait
    base_s: float = 1.0  # the first wait; it doubles with each further failure
    cap_s: float = 900.0  # and never exceeds this
    forget_s: float = 3600.0  # failures older than this (counted from the last one) are forgotten


class LoginBackoff:
    """Failed logins per key (("user", name), ("address", ip), ("admin", ip)): after `free` failures under a key,
    the next attempt must wait base_s * 2**(failures - free) seconds after the last failure (at most cap_s). An
    attempt that comes too early is refused (429, Retry-After) without checking the password and counts nothing; a
    success clears the username's (or the admin's) count, not the address's. Kept in memory, per server process:
    with --workers N each process counts its own failures."""

    POLICIES = {"user": BackoffPolicy(free=5), "address": BackoffPolicy(free=20), "admin": BackoffPolicy(free=5)}
    MAX_KEYS = 100_000  # beyond this, the oldest entries are forgotten (an attacker inventing usernames)

    def __init__(self, policies: dict[str, BackoffPolicy] | None = None, clock=time.monotonic):
        self.policies = {**self.POLICIES, **(policies or {})}
        self.clock = clock
        self._failures: dict[tuple[str, str], tuple[int, float]] = {}  # key -> (failures, time of the last)
        self._lock = threading.Lock()

    def _wait(self, key: tuple[str, str], at: float) -> float:
        failures, last = self._failures.get(key, (0, 0.0))
        policy = self.policies[key[0]]
        if failures < policy.free or at - last > policy.forget_s:
            return 0.0
        delay = min(policy.cap_s, policy.base_s * 2.0 ** min(failures - policy.free, 64))
        return max(0.0, last + delay - at)

    def check(self, keys) -> int:
        """Whole seconds to wait before an attempt under these keys may be checked (0: now); counts nothing. For
        checks that take no time (the admin token): count with `failed` when it is wrong."""
        with self._lock:
            wait = max((self._wait(key, self.clock()) for key in keys), default=0.0)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, keys) -> None:
        with self._lock:
            self._count(keys, self.clock())

    def attempt(self, keys) -> int:
        """For slow checks (argon2): like `check`, but a go-ahead is counted as a failure at once, so concurrent
        guesses cannot all slip in before the first fails; `succeeded` takes it back."""
        with self._lock:
            at = self.clock()
            wait = max((self._wait(key, at) for key in keys), default=0.0)
            if wait > 0:
                return math.ceil(wait)
            self._count(keys, at)
            return 0

    def _count(self, keys, at: float) -> None:
        for key in keys:
            failures, last = self._failures.pop(key, (0, 0.0))
            if at - last > self.policies[key[0]].forget_s:
                failures = 0
            self._failures[key] = (failures + 1, at)  # re-inserted: the dict stays in order of last failure
        while len(self._failures) > self.MAX_KEYS:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, keys) -> None:
        """The credentials were right: a username's or the admin's count is cleared, an address's attempt undone."""
        with self._lock:
            for key in keys:
                failures, last = self._failures.pop(key, (0, 0.0))
                if key[0] == "address" and failures > 1:
                    self._failures[key] = (failures - 1, last)
