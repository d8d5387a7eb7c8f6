"""The incident lifecycle as a state machine: which state may follow which, and who may move it.

new -> acknowledged -> dispatched -> en_route -> on_site -> resolved -> closed
(plus: cancel from any open state; recall a crew back to acknowledged; reopen a resolved or
closed incident as new; a recovered incident may resolve from any open state)
"""

from __future__ import annotations

from cityops.core.contracts import OPEN_INCIDENT_STATES, IncidentState
from ioc.errors import TransitionRefused

# The states themselves are a contract: the dashboards read them from the incidents table.
State = IncidentState
OPEN = OPEN_INCIDENT_STATES
# States in which a crew is on the job.
CREW_STATES = frozenset({State.DISPATCHED, State.EN_ROUTE, State.ON_SITE})

ALLOWED: dict[State, frozenset[State]] = {
    State.NEW: frozenset({State.ACKNOWLEDGED, State.RESOLVED, State.CANCELLED}),
    State.ACKNOWLEDGED: frozenset({State.DISPATCHED, State.RESOLVED, State.CANCELLED}),
    # Back to acknowledged = the crew is recalled (to dispatch another one).
    State.DISPATCHED: frozenset({State.EN_ROUTE, State.ON_SITE, State.ACKNOWLEDGED, State.RESOLVED, State.CANCELLED}),
    State.EN_ROUTE: frozenset({State.ON_SITE, State.ACKNOWLEDGED, State.RESOLVED, State.CANCELLED}),
    State.ON_SITE: frozenset({State.RESOLVED, State.ACKNOWLEDGED, State.CANCELLED}),
    State.RESOLVED: frozenset({State.CLOSED, State.NEW}),
    State.CLOSED: frozenset({State.NEW}),
    State.CANCELLED: frozenset(),
}


def allowed(current: State) -> list[str]:
    return sorted(s.value for s in ALLOWED[current])


def check(current: State, target: State) -> None:
    """Raise :class:`TransitionRefused` (HTTP 409) unless ``current -> target`` is allowed."""
    if target not in ALLOWED[current]:
        raise TransitionRefused(current.value, target.value, allowed(current))
