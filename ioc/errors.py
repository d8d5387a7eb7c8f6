"""IOC errors. Those raised by a request map to 4xx answers in ``ioc.app``.

::

    CityopsError                 cityops.core.errors
    └── IocError                 the IOC service cannot go on (start-up failed, the centre died)
        └── RequestError         400: a request that cannot be served as asked
            ├── NotFound         404
            ├── Forbidden        403
            └── Conflict         409: the incident or job is not in a state that allows it
                └── TransitionRefused   409, with the allowed target states

None is retriable as it is: a request error needs a different request; a 409 needs the
client to read the incident again (its ``version``) and decide anew.
"""

from cityops.core.errors import CityopsError


class IocError(CityopsError):
    """The IOC service cannot go on."""


class RequestError(IocError):
    """A request that cannot be served as asked; ``status`` is its HTTP status."""

    status = 400

    def __init__(self, message: str, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class NotFound(RequestError):
    status = 404


class Forbidden(RequestError):
    status = 403


class Conflict(RequestError):
    status = 409


class TransitionRefused(Conflict):
    def __init__(self, current: str, target: str, allowed: list[str]) -> None:
        super().__init__(
            f"an incident that is {current} cannot become {target}; allowed: {', '.join(allowed) or 'none'}",
            state=current,
            allowed=allowed,
        )
