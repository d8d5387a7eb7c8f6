"""What every route needs: the operations centre, and who is asking."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import OAuth2PasswordBearer

from ioc.auth import Permission, Principal, Unauthorized
from ioc.centre import Centre
from ioc.errors import Forbidden

_bearer = OAuth2PasswordBearer(tokenUrl="/token", auto_error=False)

# Path ids fit PostgreSQL's bigint; larger ones are refused as 422, not 500.
IncidentId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def centre(request: Request) -> Centre:
    c: Centre = request.app.state.centre
    return c


CentreDep = Annotated[Centre, Depends(centre)]


def allow(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller's identity, if their role grants ``permission`` (401/403 otherwise)."""

    async def dependency(request: Request, token: Annotated[str | None, Depends(_bearer)]) -> Principal:
        if not token:
            raise Unauthorized("log in first: POST /token, then send 'Authorization: Bearer <token>'")
        who = centre(request).tokens.check(token)
        if not who.can(permission):
            raise Forbidden(f"a {who.role.value} may not do this ({permission.value} needed)")
        return who

    dependency.__name__ = f"allow_{permission.value}"
    return dependency


Reader = Annotated[Principal, Depends(allow(Permission.READ))]
Acknowledger = Annotated[Principal, Depends(allow(Permission.ACKNOWLEDGE))]
Maintainer = Annotated[Principal, Depends(allow(Permission.MAINTAIN))]
Dispatcher = Annotated[Principal, Depends(allow(Permission.DISPATCH))]
CrewMember = Annotated[Principal, Depends(allow(Permission.CREW))]
Admin = Annotated[Principal, Depends(allow(Permission.ADMIN))]


async def allow_any(request: Request, token: Annotated[str | None, Depends(_bearer)]) -> Principal:
    """Any logged-in user; the route checks the role against what is asked."""
    if not token:
        raise Unauthorized("log in first: POST /token, then send 'Authorization: Bearer <token>'")
    return centre(request).tokens.check(token)
