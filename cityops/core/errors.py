"""Errors of the shared core, and the base every package's errors extend.

Every error a cityops package raises on purpose is a :class:`CityopsError`; its ``retriable``
says whether the same call may succeed later without anyone changing anything (a broker
that is restarting) or will fail the same way until a person acts (a refused password, a bad
profile file). Callers decide to retry or give up on that flag alone; services exit with
:data:`EXIT_RETRIABLE` or :data:`EXIT_FATAL` so that a supervisor can do the same.

The tree, one ``errors.py`` per package (each draws its own part)::

    CityopsError                      cityops.core.errors   retriable: False unless shown
    ├── SchemaError                   the database schema could not be created or checked
    ├── BrokerError                   the MQTT adapter (cityops.core.mqtt)
    │   ├── BrokerUnavailable         no connection, or it dropped            retriable
    │   └── BrokerRefused             the broker refused the client (credentials, ACL)
    ├── StackError                    cityops.devstack.errors
    ├── GatewayError                  gateway.errors
    ├── StreamError                   stream.errors
    ├── IocError                      ioc.errors
    └── SimError                      firmware_sim.errors

A payload a device sent is not an error of the service: the gateway's ``PayloadError`` is a
``ValueError`` whose reason goes to the dead-letter topic.
"""

from __future__ import annotations

import psycopg
from aiokafka.errors import KafkaTimeoutError

# sysexits(3): EX_TEMPFAIL ("try again later") and EX_CONFIG. Anything else a service exits
# with (an unexpected exception) is treated as retriable by the supervisor, within its budget.
EXIT_RETRIABLE = 75
EXIT_FATAL = 78


class CityopsError(Exception):
    """Base of every error the cityops packages raise on purpose.

    ``retriable`` is a class default that an instance may override (``retriable=...``), for
    errors whose cause decides it, such as a wrapped Kafka error.
    """

    retriable: bool = False

    def __init__(self, *args: object, retriable: bool | None = None) -> None:
        super().__init__(*args)
        if retriable is not None:
            self.retriable = retriable


class SchemaError(CityopsError):
    """The database schema could not be created or checked."""


class BrokerError(CityopsError):
    """The MQTT broker could not be used."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached, or the connection dropped: connecting again may work."""

    retriable = True


class BrokerRefused(BrokerError):
    """The broker refused the connection (bad credentials, not authorised, invalid client id):
    it will refuse it again until the credentials or the broker's ACL change."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def is_retriable(exc: BaseException) -> bool:
    """Whether the operation that raised ``exc`` may succeed if tried again unchanged.

    Our errors say so themselves; aiokafka's carry ``retriable`` too (a send that timed out
    counts as one); a connection that could
    not be made or dropped (``ConnectionError``, psycopg's ``OperationalError``) may come back.
    A group is retriable when all of its errors are.
    """
    if isinstance(exc, BaseExceptionGroup):
        return all(is_retriable(e) for e in exc.exceptions)
    if isinstance(exc, CityopsError):
        return exc.retriable
    if isinstance(exc, psycopg.OperationalError):
        # psycopg gives no SQLSTATE for a refused connection, only the server's message.
        return exc.sqlstate not in _REFUSED_SQLSTATES and not any(m in str(exc) for m in _REFUSED_CONNECTIONS)
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, KafkaTimeoutError):
        # aiokafka calls it final, but a send times out when no broker answered within the
        # request timeout: an outage that passes, not a refusal.
        return True
    return bool(getattr(exc, "retriable", False))


# Refusals a restart cannot fix: wrong credentials, an unknown role or database, no access.
_REFUSED_SQLSTATES = frozenset({"28000", "28P01", "3D000", "42501"})
_REFUSED_CONNECTIONS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "permission denied",
)
