"""Request dependencies: a database session per request, and who is asking (labeler, admin or nobody).

Anonymous requests get 401, a labeler on an admin endpoint 403, a cookie-authenticated state-changing request
without the session's CSRF token 403. Nothing here reveals whether an id exists.

Who is asking is looked up in a read-only transaction of its own, so a request takes the SQLite write lock only
when its endpoint writes; GET requests read through read-only sessions and never take it. A session ends when it
has been idle longer than `app.state.session_idle`, when it is older than `app.state.session_max`, when its labeler
is deactivated, and (admin sessions) when the server runs with another admin token than the one it was opened with.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select, update
from sqlalchemy.orm import Session as DB

from prefer.labeling.app.models import Session, User, aware, now
from prefer.labeling.app.security import COOKIE, CSRF_HEADER, same_secret, token_digest

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
TOUCH_EVERY = timedelta(minutes=1)  # last_seen_at is written at most this often per session (a write per request
# would queue every read behind the write lock)


def get_db(request: Request) -> Iterator[DB]:
    state = request.app.state
    maker = state.read_sessionmaker if request.method in SAFE_METHODS else state.sessionmaker
    with maker() as db:
        yield db


DBDep = Annotated[DB, Depends(get_db)]


@dataclass
class Identity:
    session: Session | None  # None for the admin's bearer token
    user: User | None
    is_admin: bool


def session_alive(state, session: Session, user: User | None, moment) -> bool:
    if user is not None and not user.active:
        return False
    if session.is_admin and not hmac.compare_digest(session.admin_key or "", state.admin_key):
        return False  # opened under another admin token (or before 0003)
    created = aware(session.created_at)
    last = aware(session.last_seen_at) or created
    return moment - created <= state.session_max and moment - last <= state.session_idle


def identify(request: Request) -> Identity | None:
    state = request.app.state
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        # Guessing the token through the header backs off exactly as through /api/admin/login.
        keys = [("admin", request.client.host if request.client else "unknown")]
        wait = state.backoff.check(keys)
        if wait:
            raise HTTPException(
                429, f"too many wrong admin tokens: try again in {wait} s", headers={"Retry-After": str(wait)}
            )
        if same_secret(authorization[7:].strip(), state.admin_token):
            return Identity(None, None, True)
        state.backoff.failed(keys)
        raise HTTPException(401, "Authorization: invalid admin token")
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    with state.read_sessionmaker() as db:
        session = db.scalar(select(Session).where(Session.token_hash == token_digest(token)))
        if session is None:
            return None
        user = db.get(User, session.user_id) if session.user_id is not None else None
    moment = now()
    if not session_alive(state, session, user, moment):
        return None
    if request.method not in SAFE_METHODS and not same_secret(request.headers.get(CSRF_HEADER), session.csrf_token):
        raise HTTPException(403, f"{CSRF_HEADER}: missing or wrong CSRF token")
    if moment - (aware(session.last_seen_at) or aware(session.created_at)) > TOUCH_EVERY:
        with state.sessionmaker() as db:  # one short write, before the request's own transaction begins
            db.execute(update(Session).where(Session.id == session.id).values(last_seen_at=moment))
            db.commit()
        session.last_seen_at = moment
    return Identity(session, user, session.is_admin)


def optional_identity(request: Request) -> Identity | None:
    return identify(request)


def require_labeler(request: Request) -> User:
    identity = identify(request)
    if identity is None:
        raise HTTPException(401, "not logged in")
    if identity.user is None:
        raise HTTPException(403, "this endpoint is for labelers")
    return identity.user


def require_admin(request: Request) -> Identity:
    identity = identify(request)
    if identity is None:
        raise HTTPException(401, "not logged in")
    if not identity.is_admin:
        raise HTTPException(403, "this endpoint is for the admin")
    return identity


def require_identity(request: Request) -> Identity:
    identity = identify(request)
    if identity is None:
        raise HTTPException(401, "not logged in")
    return identity


OptionalIdentity = Annotated[Identity | None, Depends(optional_identity)]
AnyIdentity = Annotated[Identity, Depends(require_identity)]
Labeler = Annotated[User, Depends(require_labeler)]
Admin = Annotated[Identity, Depends(require_admin)]
