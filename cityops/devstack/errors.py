"""Errors of the local development stack.

::

    CityopsError                  cityops.core.errors
    └── StackError                a component could not be installed, configured, started or stopped
        └── PortTimeout           started, but nothing listened on its port in time     retriable

A ``StackError`` carries the failing command's output or the component's log tail: it is
meant for the person running ``cityops stack up``.
"""

from __future__ import annotations

from cityops.core.errors import CityopsError


class StackError(CityopsError):
    """The local stack could not be installed, configured, started or stopped."""


class PortTimeout(StackError):
    """A component was started but did not listen in time (a slow, busy machine: try again)."""

    retriable = True
