"""The periodic work: heartbeat, reap, the deadline sweep, reconcile, workspace measurement.

Each gathers facts, asks a pure policy (``launcher.policy``) and acts through the one stop path and
the one fail path (``launcher.flows``); each is bounded in time whatever the notebooks do.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime
from pathlib import Path

from launcher.adapters.jupyter_http import PROBE_DEADLINE_S, NoAnswer
from launcher.adapters.redis_stats import StatsStore
from launcher.adapters.redis_store import SessionStore
from launcher.errors import Conflict, LauncherError, NotFound
from launcher.flows import admit_waiting, fail, request_stop, requeue
from launcher.logs import event
from launcher.models import Reason, Session, SessionStatus, utcnow
from launcher.policy import Deadlines, Due, ReapPolicy, Verdict, deadline_due, should_reap
from launcher.ports import ContainerState, Dispatcher
from launcher.settings import Settings
from launcher.spec import LABEL_PREFIX, container_name
from launcher.transitions import ActorKind, By, MarkStopped, RecordActivity
from launcher.validation import validate_template_name, validate_user_id
from workers import cgroup_stats, hostfs, labstatic, quota
from workers.activity import Activity, probe
from workers.lifecycle import WorkerContext, clean_up

log = logging.getLogger("launcher.worker")
REAPER = By(ActorKind.REAPER)
SWEEPER = By(ActorKind.SWEEPER)


def _socket_path(ctx: WorkerContext, session_id: str) -> Path:
    """The locked socket of a running session (raises OSError for anything else at that path)."""
    return hostfs.checked_socket(ctx.settings, session_id)


_DEATH = {
    ContainerState.OOM_KILLED: (Reason.OOM, "the notebook was stopped: it ran out of memory (its limit is {mem})"),
    ContainerState.EXITED: (Reason.DIED, "the notebook container exited unexpectedly"),
    ContainerState.MISSING: (Reason.LOST, "the notebook container disappeared"),
}


def mark_dead(ctx: WorkerContext, session: Session, state: ContainerState) -> Session | None:
    """A running session whose container is gone: the end state first (why), then the clean-up."""
    reason, message = _DEATH.get(state, (Reason.DIED, "the notebook container stopped answering"))
    message = message.format(mem=f"{session.mem_bytes / 2**30:g} GB")
    current = ctx.store.get(session.id)
    if current is None or current.status != SessionStatus.RUNNING:
        return None
    dead = fail(ctx.store, None, session.id, ctx.by, reason, message)
    clean_up(ctx, session.id, session.user)
    if dead is None or dead.status != SessionStatus.ERROR or dead.stop_reason != reason:
        return None
    event(log, "session.died", session_id=session.id, user=session.user, host=ctx.settings.host_name, reason=reason)
    return dead


SWEEP_DEADLINE_MAX_S = 60.0  # the probes of one sweep never take longer, whatever the interval


def sweep_deadline_for(settings: Settings, probe_deadline: float = PROBE_DEADLINE_S) -> float:
    """How long one sweep's probes may take: half the heartbeat interval, at least two probes, at most 60 s."""
    return min(SWEEP_DEADLINE_MAX_S, max(2 * probe_deadline, settings.heartbeat_interval_s / 2))


def _probe_all(
    ctx: WorkerContext, sessions: list[Session], max_parallel: int, probe_deadline: float, until: float
) -> dict[str, Activity | Exception | None]:
    """Probe in parallel until ``until`` (monotonic): per session an ``Activity``, the error of a server
    that did not answer, or None when its probe never started (no time was left).

    No probe outlives ``until`` by more than a moment (each gets at most the time left), and the pool is
    not waited for past it: a probe still running then is abandoned and counts as not answering.
    """

    def look(session: Session) -> Activity | Exception | None:
        left = until - time.monotonic()
        if left <= 0:
            return None
        try:
            path = _socket_path(ctx, session.id)
            return probe(path, session.token.get_secret_value(), deadline=min(probe_deadline, left))
        except Exception as exc:  # noqa: BLE001 - any failure means "did not answer"; the container decides
            return exc

    pool = ThreadPoolExecutor(max_workers=min(max_parallel, len(sessions)), thread_name_prefix="heartbeat-probe")
    try:
        futures = [(s.id, pool.submit(look, s)) for s in sessions]
        wait([f for _, f in futures], timeout=max(0.0, until - time.monotonic()))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    looks: dict[str, Activity | Exception | None] = {}
    for sid, future in futures:
        if future.cancelled():
            looks[sid] = None
        elif future.done():
            looks[sid] = future.result()
        else:
            looks[sid] = NoAnswer("still probing at the sweep deadline (abandoned)")
    return looks


def _record(ctx: WorkerContext, session: Session, activity: Activity | None) -> bool:
    """Record a still-running session's activity (no audit entry; ``None``: its server did not answer,
    so it has no busy kernel); False when it stopped meanwhile."""
    if activity is None:
        command = RecordActivity(by=ctx.by, reason=Reason.ACTIVITY, kernels_busy=0, connections=session.connections)
    else:
        command = RecordActivity(
            by=ctx.by,
            reason=Reason.ACTIVITY,
            last_activity_at=activity.last_activity,
            kernels_busy=activity.kernels_busy,
            connections=activity.connections,
        )
    try:
        ctx.store.apply(session.id, command)
    except (Conflict, NotFound):
        return False
    return True


def heartbeat(
    ctx: WorkerContext,
    max_parallel: int = 32,
    probe_deadline: float = PROBE_DEADLINE_S,
    sweep_deadline: float | None = None,
) -> dict[str, int]:
    """Read every running session's activity on this host in parallel, store it, detect dead containers.

    Bounded whatever the notebooks' servers do: each probe has ``probe_deadline``, all probes together
    ``sweep_deadline`` (default ``sweep_deadline_for``), and looking up the containers of silent servers
    stops after as long again. A server that did not answer while its container runs is ``unreachable``
    and stored with no busy kernel, so a hung server is not held busy forever; ``skipped`` sessions got
    no probe in time and are left as they were.
    """
    t0 = time.monotonic()
    if sweep_deadline is None:
        sweep_deadline = sweep_deadline_for(ctx.settings, probe_deadline)
    sessions = [s for s in ctx.store.list_live(ctx.settings.host_name) if s.status == SessionStatus.RUNNING]
    counts = {"running": len(sessions), "updated": 0, "dead": 0, "unreachable": 0, "skipped": 0}
    if not sessions:
        return counts
    looks = _probe_all(ctx, sessions, max_parallel, probe_deadline, t0 + sweep_deadline)
    lookups_until = t0 + 2 * sweep_deadline
    runtime_answers = True
    for session in sessions:
        seen = looks[session.id]
        if seen is None:
            counts["skipped"] += 1
        elif isinstance(seen, Activity):
            if _record(ctx, session, seen):
                counts["updated"] += 1
        else:
            state = None  # unknown: the runtime failed or the time for lookups is over
            if runtime_answers and time.monotonic() < lookups_until:
                try:
                    state = ctx.runtime.state(container_name(ctx.settings, session.id))
                except LauncherError as exc:
                    runtime_answers = False
                    event(log, "heartbeat.runtime_failed", level=logging.WARNING, error=exc.log_message)
            if state in (None, ContainerState.RUNNING):
                counts["unreachable"] += 1
                _record(ctx, session, None)
                continue
            try:
                if mark_dead(ctx, session, state) is not None:
                    counts["dead"] += 1
            except Exception:  # one session's clean-up must not stop the sweep; the next one retries
                log.exception("heartbeat.mark_dead_failed session_id=%s", session.id)
    try:  # CPU and memory figures for admins, from the host's cgroup files (a few reads per container)
        cgroup_stats.record(StatsStore(ctx.store.redis, ctx.settings), sessions)
    except Exception:  # noqa: BLE001 - figures for display only: they never fail a heartbeat
        log.warning("heartbeat.stats_failed", exc_info=True)
    if counts["unreachable"] or counts["skipped"]:
        level = logging.WARNING if counts["skipped"] else logging.INFO
        took = round(time.monotonic() - t0, 3)
        event(log, "heartbeat.swept", level=level, host=ctx.settings.host_name, seconds=took, **counts)
    return counts


def reap(store: SessionStore, policy: ReapPolicy, dispatcher: Dispatcher, now: datetime | None = None) -> list[str]:
    """Stop every running session the policy says to reap (the one stop path); returns their ids."""
    now = now or utcnow()
    reaped = []
    down = store.down_hosts()  # activity from a host that does not answer is unknown, not idle
    for session in store.list_live():
        if session.host in down:
            continue
        decision = should_reap(session, now, policy)
        if decision.verdict != Verdict.REAP or decision.reason is None:
            continue
        try:
            request_stop(store, dispatcher, session.id, REAPER, decision.reason)
        except (Conflict, NotFound):
            continue
        event(log, "session.reap", session_id=session.id, user=session.user, reason=decision.reason, why=decision.why)
        reaped.append(session.id)
    return reaped


_DEADLINE_MESSAGES = {
    Due.FAIL_WAITING: (
        Reason.QUEUE_TIMEOUT,
        "no room came free within {s:.0f} s of waiting; launch again later, or ask an administrator about capacity",
    ),
    Due.FAIL_QUEUED: (
        Reason.NO_WORKER,
        "no worker took this launch within {s:.0f} s: the Docker host may be down. Try again, or ask an operator",
    ),
    Due.FAIL_STARTING: (
        Reason.START_TIMEOUT,
        "the notebook did not come up within {s:.0f} s; try again, or ask an operator to look at the host",
    ),
}


def sweep_deadlines(
    store: SessionStore, dispatcher: Dispatcher, deadlines: Deadlines, now: datetime | None = None
) -> dict[str, int]:
    """End every live session past its state's deadline, with a reason its owner can read; send again the
    starts and stops that may have been lost (both are safe to repeat)."""
    now = now or utcnow()
    counts = {str(due): 0 for due in Due if due != Due.NOTHING}
    down = store.down_hosts()
    for session in store.list_live():
        due = deadline_due(session, now, deadlines, host_down=session.host in down)
        if due == Due.NOTHING:
            continue
        try:
            if due == Due.REQUEUE:
                if requeue(store, session.id, SWEEPER) is None:
                    continue
            elif due == Due.RESEND_START:
                dispatcher.start(session)
            elif due == Due.RESEND_STOP:
                dispatcher.stop(session)
            elif due in _DEADLINE_MESSAGES:
                reason, message = _DEADLINE_MESSAGES[due]
                limit = {Due.FAIL_QUEUED: deadlines.queued, Due.FAIL_WAITING: deadlines.waiting}.get(
                    due, deadlines.starting
                )
                fail(store, dispatcher, session.id, SWEEPER, reason, message.format(s=limit.total_seconds()))
            else:  # FORCE_STOPPED: end it; its host removes the container when it can
                note = f"stopped by force after {deadlines.stopping.total_seconds():.0f} s in stopping"
                reason = session.stop_reason or Reason.STOP_TIMEOUT
                ended = store.apply(session.id, MarkStopped(by=SWEEPER, reason=reason, note=note))
                dispatcher.discard(ended)
        except (Conflict, NotFound):
            continue  # it moved on meanwhile
        except LauncherError as exc:  # the broker is down: the next sweep tries again
            event(log, "sweep.failed", level=logging.WARNING, session_id=session.id, due=due, error=exc.log_message)
            continue
        counts[str(due)] += 1
        event(log, "session.deadline", session_id=session.id, user=session.user, due=due)
    try:  # room may have freed without a trigger reaching the queue (a worker lost mid-stop): admit now
        counts["admitted"] = len(admit_waiting(store, dispatcher, actor=str(SWEEPER)))
    except LauncherError as exc:
        event(log, "sweep.admit_failed", level=logging.WARNING, error=exc.log_message)
    return counts


def _rebuild(ctx: WorkerContext, labels: dict[str, str], container_id: str, token: str) -> Session | None:
    try:
        sid = labels[f"{LABEL_PREFIX}.session"]
        created = datetime.fromisoformat(labels[f"{LABEL_PREFIX}.created"])
        default = ctx.settings.profile(None)  # containers started before profiles were recorded
        return Session(
            id=sid,
            user=validate_user_id(labels[f"{LABEL_PREFIX}.user"]),
            template=validate_template_name(labels[f"{LABEL_PREFIX}.template"]),
            name=labels.get(f"{LABEL_PREFIX}.name", ""),
            profile=labels.get(f"{LABEL_PREFIX}.profile", ctx.settings.default_profile),
            cpus=float(labels.get(f"{LABEL_PREFIX}.cpus", default.cpus)),
            mem_bytes=int(labels.get(f"{LABEL_PREFIX}.mem_bytes", default.mem_bytes)),
            pids_limit=int(labels.get(f"{LABEL_PREFIX}.pids_limit", default.pids_limit)),
            status=SessionStatus.RUNNING,
            host=ctx.settings.host_name,
            container_id=container_id,
            token=token,
            url=ctx.settings.session_origin(sid),
            created_at=created,
            started_at=created,
            last_activity_at=utcnow(),
        )
    except (KeyError, ValueError, LauncherError):
        return None


def reconcile(ctx: WorkerContext) -> dict[str, int]:
    """Make this host's containers and Redis agree.

    A labelled container whose session Redis lost is adopted back when the session can be rebuilt
    from its labels and its Jupyter answers with the secret its session folder keeps; otherwise it is
    removed, as is any container whose session has ended. A running session whose container is gone is
    marked. Every decision re-reads the session and the container just before acting: a session that
    reached ``running`` while reconcile ran (its container new) is never touched.
    """
    host = ctx.settings.host_name
    counts = {"adopted": 0, "removed": 0, "marked": 0, "released": 0}
    containers = [
        c
        for c in ctx.runtime.list_managed(ctx.settings.instance)
        if c.labels.get(f"{LABEL_PREFIX}.host") == host and not (c.pool_slot and not c.session_id)
    ]  # warm-pool containers nobody claimed are the pool's (pool.reconcile below), not orphans
    for c in containers:
        session = ctx.store.get(c.session_id) if c.session_id else None
        if session is not None and session.status.live:
            continue
        if session is None and c.state == ContainerState.RUNNING and _adopt(ctx, c.id, c.session_id, c.labels):
            counts["adopted"] += 1
            continue
        fresh = ctx.store.get(c.session_id) if c.session_id else None  # re-check just before removing
        if fresh is not None and fresh.status.live:
            continue
        if c.session_id:
            clean_up(ctx, c.session_id, c.labels.get(f"{LABEL_PREFIX}.user"))
        else:
            ctx.runtime.stop(c.name, timeout=0)
        counts["removed"] += 1
        event(log, "container.orphan_removed", name=c.name, host=host)
    live = ctx.store.list_live(host)
    for session in live:
        if session.status != SessionStatus.RUNNING:
            continue
        state = ctx.runtime.state(container_name(ctx.settings, session.id))  # now, not from the list above
        if state != ContainerState.RUNNING and mark_dead(ctx, session, state) is not None:
            counts["marked"] += 1
    # Workspace images still mounted for users with nothing live here (a worker died mid-stop).
    for user in quota.mounted_users(ctx.settings):
        with quota.user_lock(user):  # a start attaching this workspace right now holds the lock
            if any(s.host == host for s in ctx.store.live_sessions_for(user)):
                continue
            quota.detach(ctx.settings, user)
            counts["released"] += 1
    from workers import pool

    counts.update(pool.reconcile(ctx))
    bases = [ctx.settings.lab_static_dir, ctx.settings.python_prefix_dir]
    counts["archives"] = labstatic.sweep_archives(ctx.runtime, bases)  # left by a worker killed mid-copy
    ctx.store.recount_host(host)  # what is reserved here, recounted from what is live here
    return counts


def _adopt(ctx: WorkerContext, container_id: str, session_id: str, labels: dict[str, str]) -> bool:
    token = hostfs.read_secret(ctx.settings, session_id) if session_id else ""
    rebuilt = _rebuild(ctx, labels, container_id, token) if token else None
    if rebuilt is None:
        return False
    try:
        probe(_socket_path(ctx, rebuilt.id), token, deadline=2.0)
    except Exception:  # noqa: BLE001 - it does not answer: not adopted
        return False
    if not ctx.store.adopt(rebuilt, actor=str(By(ActorKind.RECONCILER, ctx.settings.host_name))):
        return False
    event(log, "session.adopted", session_id=rebuilt.id, user=rebuilt.user, host=ctx.settings.host_name)
    return True


def unfinished(ctx: WorkerContext) -> tuple[list[str], list[str]]:
    """Sessions on this host left mid-start or mid-stop (e.g. by a worker that died): (starting, stopping)."""
    live = ctx.store.list_live(ctx.settings.host_name)
    return (
        [s.id for s in live if s.status in (SessionStatus.QUEUED, SessionStatus.STARTING)],
        [s.id for s in live if s.status == SessionStatus.STOPPING],
    )


def measure_workspaces(ctx: WorkerContext) -> dict[str, int]:
    """Record the workspace usage of every user with a live session on this host (for the console,
    and for launches above the quota where the filesystem does not enforce it)."""
    users = {s.user for s in ctx.store.list_live(ctx.settings.host_name)}
    over = 0
    for user in sorted(users):
        try:
            workspace = hostfs.prepare_workspace(ctx.settings, user)
        except LauncherError:
            continue
        usage = quota.measure(ctx.settings, workspace)
        ctx.store.set_usage(user, usage)
        over += usage.over
    return {"measured": len(users), "over": over}
