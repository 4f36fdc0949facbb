"""Request dependencies: a database session per request, and who is asking (labeler, admin or nobody).

Anonymous requests get 401, a labeler on an admin endpoint 403, a cookie-authenticated state-changing request
without the session's CSRF token 403. Nothing here reveals whether an id exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.orm import Session as DB

from prefer.labeling.app.models import Session, User
from prefer.labeling.app.security import COOKIE, CSRF_HEADER, same_secret, token_digest

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def get_db(request: Request) -> Iterator[DB]:
    with request.app.state.sessionmaker() as db:
        yield db


DBDep = Annotated[DB, Depends(get_db)]


@dataclass
class Identity:
    session: Session | None  # None for the admin's bearer token
    user: User | None
    is_admin: bool


def identify(request: Request, db: DB) -> Identity | None:
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        if same_secret(authorization[7:].strip(), request.app.state.admin_token):
            return Identity(None, None, True)
        raise HTTPException(401, "Authorization: invalid admin token")
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    session = db.scalar(select(Session).where(Session.token_hash == token_digest(token)))
    if session is None:
        return None
    user = db.get(User, session.user_id) if session.user_id is not None else None
    if user is not None and not user.active:
        return None
    if request.method not in SAFE_METHODS and not same_secret(request.headers.get(CSRF_HEADER), session.csrf_token):
        raise HTTPException(403, f"{CSRF_HEADER}: missing or wrong CSRF token")
    return Identity(session, user, session.is_admin)


def optional_identity(request: Request, db: DBDep) -> Identity | None:
    return identify(request, db)


def require_labeler(request: Request, db: DBDep) -> User:
    identity = identify(request, db)
    if identity is None:
        raise HTTPException(401, "not logged in")
    if identity.user is None:
        raise HTTPException(403, "this endpoint is for labelers")
    return identity.user


def require_admin(request: Request, db: DBDep) -> Identity:
    identity = identify(request, db)
    if identity is None:
        raise HTTPException(401, "not logged in")
    if not identity.is_admin:
        raise HTTPException(403, "this endpoint is for the admin")
    return identity


OptionalIdentity = Annotated[Identity | None, Depends(optional_identity)]
Labeler = Annotated[User, Depends(require_labeler)]
Admin = Annotated[Identity, Depends(require_admin)]
