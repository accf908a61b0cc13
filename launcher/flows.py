"""The one stop path and the one fail path, used by the console, the CLI, the reaper, stop-all, the
deadline sweep and recovery alike.

Both write the state first and hand the clean-up to the owning host after, so an outage in between
(a broker that refuses, a host that is down) never leaves a session unfinished: a stop whose dispatch
failed sits in ``stopping`` and the deadline sweep sends it again, then ends it by force; a failed
session's leftovers are removed by its host's reconcile whenever it runs.
"""

from __future__ import annotations

import logging

from launcher.errors import Conflict, NotFound, RuntimeUnavailable
from launcher.logs import event
from launcher.models import Reason, Session, SessionStatus
from launcher.ports import Dispatcher, SessionRepository
from launcher.transitions import By, Cancel, FailStart, MarkFailed, RequestStop, Requeue

log = logging.getLogger("launcher")


def request_stop(
    store: SessionRepository,
    dispatcher: Dispatcher,
    session_id: str,
    by: By,
    reason: Reason,
    *,
    batch: str | None = None,
) -> Session:
    """Move a live session to ``stopping`` and ask its host to stop it.

    A launch still waiting for room is cancelled instead (it ends at once: nothing runs anywhere).
    Raises ``NotFound`` / ``Conflict`` when there is nothing to stop. A dispatch that fails is logged,
    not raised: the session is already ``stopping``, and the deadline sweep sends the stop again.
    """
    current = store.get(session_id)
    if current is not None and current.status == SessionStatus.WAITING:
        try:
            ended = store.apply(session_id, Cancel(by=by, reason=reason, batch=batch))
        except Conflict:  # admitted meanwhile: stop it like any other
            pass
        else:
            admit_waiting(store, dispatcher)  # the head of the queue may have been what held the others
            return ended
    session = store.apply(session_id, RequestStop(by=by, reason=reason, batch=batch))
    try:
        dispatcher.stop(session)
    except RuntimeUnavailable as exc:
        event(log, "session.stop_dispatch_failed", level=logging.WARNING, session_id=session_id, error=exc.log_message)
    return session


def fail(
    store: SessionRepository,
    dispatcher: Dispatcher | None,
    session_id: str,
    by: By,
    reason: Reason,
    error: str,
    *,
    starting_only: bool = False,
) -> Session | None:
    """End a live session in ``error`` with a message its owner can read, then ask its host to clean up.

    Returns the ended session, or the current record when it had already ended (None if it is gone).
    """
    command = (FailStart if starting_only else MarkFailed)(by=by, reason=reason, error=error)
    try:
        session = store.apply(session_id, command)
    except (Conflict, NotFound):
        return store.get(session_id)
    if dispatcher is not None and session.host is not None:
        try:
            dispatcher.discard(session)
        except RuntimeUnavailable as exc:  # reconcile on that host removes what is left
            failed = exc.log_message
            event(log, "session.discard_dispatch_failed", level=logging.WARNING, session_id=session_id, error=failed)
    return session


def admit_waiting(store: SessionRepository, dispatcher: Dispatcher, *, actor: str = "launcher") -> list[Session]:
    """Admit waiting launches while hosts have room (in arrival order) and send each admitted start to its host.

    Called wherever room may have freed or arrived: a launch, a stop or failure, a host that registers, the
    deadline sweep. A start whose dispatch fails stays ``queued``: the deadline sweep sends it again.
    """
    admitted = store.admit(actor=actor)
    dispatch_starts(dispatcher, admitted)
    return admitted


def dispatch_starts(dispatcher: Dispatcher, sessions: list[Session]) -> None:
    for session in sessions:
        try:
            dispatcher.start(session)
        except RuntimeUnavailable as exc:
            failed = exc.log_message
            event(log, "session.start_dispatch_failed", level=logging.WARNING, session_id=session.id, error=failed)


def requeue(store: SessionRepository, session_id: str, by: By) -> Session | None:
    """Put an admitted launch whose host went down before starting it back in the queue, in its old place."""
    try:
        return store.apply(session_id, Requeue(by=by, reason=Reason.HOST_DOWN))
    except (Conflict, NotFound):
        return None
