"""Who may do what: users, roles, bearer tokens (OAuth2 password flow issuing JWTs).

A token names its user, role and (for crews) crew; it is valid until it expires
(``token_ttl_s``), so a changed role takes effect at the next login.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from datetime import timedelta

import jwt
import psycopg
from pwdlib import PasswordHash

from ioc.clock import Clock
from ioc.errors import Conflict, RequestError
from ioc.settings import Environment, IocSettings

ALGORITHM = "HS256"
_hasher = PasswordHash.recommended()  # argon2id
# Verified against when a user does not exist, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not a password")


class Role(enum.StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    DISPATCHER = "dispatcher"
    CREW = "crew"
    ADMIN = "admin"


class Permission(enum.StrEnum):
    READ = "read"  # incidents, alerts, devices, readings, crews, maintenance, KPIs, audit
    ACKNOWLEDGE = "acknowledge"  # acknowledge and ask to resolve (the data must confirm)
    MAINTAIN = "maintain"  # maintenance windows
    DISPATCH = "dispatch"  # dispatch, recall, cancel, close, reopen, override, act for a crew
    CREW = "crew"  # the crew's own jobs and position
    ADMIN = "admin"  # users, crews, critical sites


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.ACKNOWLEDGE, Permission.MAINTAIN}),
    Role.DISPATCHER: frozenset({Permission.READ, Permission.ACKNOWLEDGE, Permission.MAINTAIN, Permission.DISPATCH}),
    Role.CREW: frozenset({Permission.CREW}),
    Role.ADMIN: frozenset(
        {Permission.READ, Permission.ACKNOWLEDGE, Permission.MAINTAIN, Permission.DISPATCH, Permission.ADMIN}
    ),
}


@dataclass(frozen=True)
class Principal:
    username: str
    role: Role
    crew_id: str | None = None

    def can(self, permission: Permission) -> bool:
        return permission in GRANTS[self.role]


SYSTEM = Principal("system", Role.ADMIN)


class Unauthorized(RequestError):
    status = 401


class Tokens:
    """Issues and checks tokens signed with one secret."""

    def __init__(self, secret: str, ttl_s: float, clock: Clock) -> None:
        self._secret = secret
        self._ttl = timedelta(seconds=ttl_s)
        self._clock = clock

    def issue(self, principal: Principal) -> str:
        now = self._clock()
        claims: dict[str, object] = {"sub": principal.username, "role": principal.role.value, "iat": now}
        claims["exp"] = now + self._ttl
        if principal.crew_id is not None:
            claims["crew"] = principal.crew_id
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def check(self, token: str) -> Principal:
        try:
            # Expiry is judged on the injected clock, so tests that drive time see tokens expire.
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={"verify_exp": False, "verify_iat": False, "require": ["exp", "sub"]},
            )
            if claims["exp"] <= self._clock().timestamp():
                raise Unauthorized("token expired; log in again")
            return Principal(str(claims["sub"]), Role(claims["role"]), claims.get("crew"))
        except (jwt.InvalidTokenError, KeyError, ValueError) as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def signing_secret(settings: IocSettings) -> str:
    """The configured secret; in development without one, a random one kept in the state
    directory, so that tokens survive a restart of the API (wall screens stay logged in)."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    if settings.environment is not Environment.DEVELOPMENT:  # IocSettings refuses this already
        raise ValueError("a JWT secret is required outside development")
    path = settings.state_dir / "ioc-development-jwt-secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(32)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_text(secret)
        tmp.chmod(0o600)
        tmp.replace(path)
        return path.read_text().strip()


async def authenticate(conn: psycopg.AsyncConnection[object], username: str, password: str) -> Principal:
    cur = await conn.execute("SELECT password_hash, role, crew_id FROM users WHERE username = %s", (username,))
    row = await cur.fetchone()
    if row is None:
        _hasher.verify(password, _DUMMY_HASH)
        raise Unauthorized("wrong user name or password")
    values: tuple[object, ...] = tuple(row)  # type: ignore[arg-type]
    if not _hasher.verify(password, str(values[0])):
        raise Unauthorized("wrong user name or password")
    return Principal(username, Role(str(values[1])), None if values[2] is None else str(values[2]))


async def add_user(
    conn: psycopg.AsyncConnection[object],
    username: str,
    password: str,
    role: Role,
    crew_id: str | None = None,
    *,
    replace: bool = False,
    check_strength: bool = True,
) -> None:
    if (role is Role.CREW) != (crew_id is not None):
        raise RequestError("a crew member needs a crew_id, and only a crew member has one")
    if check_strength and len(password) < 8:
        raise RequestError("a password needs at least 8 characters")
    conflict = (
        "DO UPDATE SET password_hash = EXCLUDED.password_hash, role = EXCLUDED.role, crew_id = EXCLUDED.crew_id"
        if replace
        else "DO NOTHING"
    )
    cur = await conn.execute(
        f"INSERT INTO users (username, password_hash, role, crew_id) VALUES (%s, %s, %s, %s) "
        f"ON CONFLICT (username) {conflict}".encode(),
        (username, _hasher.hash(password), role.value, crew_id),
    )
    if cur.rowcount == 0:
        raise Conflict(f"user {username!r} exists")
