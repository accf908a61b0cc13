"""The one way in for the console and the CLI: validate, authorize, record, enqueue.

The service never touches Docker; it records intent in the store (atomically) and hands the
container work to the host's worker through the dispatcher. Every method takes the acting user.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import timedelta

from pydantic import SecretStr

from launcher.errors import (
    Conflict,
    InvalidRequest,
    LauncherError,
    LimitReached,
    NotFound,
    PermissionDenied,
    RuntimeUnavailable,
)
from launcher.flows import admit_waiting, dispatch_starts, fail, request_stop
from launcher.models import (
    TERMINAL_STATUSES,
    Actor,
    AuditEvent,
    HostInfo,
    Permission,
    Reason,
    Session,
    SessionStatus,
    WorkspaceUsage,
    new_session_id,
    new_token,
    utcnow,
)
from launcher.ports import Dispatcher, SessionRepository
from launcher.rbac import authorize, may_act_on
from launcher.settings import Settings
from launcher.transitions import ActorKind, By, KeepAlive, SetMaxAgeExempt
from launcher.validation import (
    available_templates,
    resolve_template,
    validate_profile_name,
    validate_session_name,
    validate_user_id,
)
from launcher.views import SessionView, Template, admission_interval, session_view, template, typical_launch

TYPICAL_CACHE_S = 30.0  # the typical launch time is read from the audit stream at most this often


@dataclass(frozen=True)
class StopAllProgress:
    """A stop-all as its sessions show it: how many it asked to stop, and how many have ended."""

    batch: str
    total: int
    done: int

    @property
    def finished(self) -> bool:
        return self.done >= self.total


def redact(session: Session) -> Session:
    return session.model_copy(update={"token": SecretStr("")})


class LauncherService:
    def __init__(self, settings: Settings, store: SessionRepository, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.store = store
        self.dispatcher = dispatcher
        self._typical: tuple[float, timedelta | None] = (-TYPICAL_CACHE_S, None)
        self._interval: tuple[float, timedelta | None] = (-TYPICAL_CACHE_S, None)

    # -- helpers ----------------------------------------------------------------------------
    def _visible(self, actor: Actor, session: Session) -> Session:
        """Nobody receives the Jupyter secret: the entry point adds it upstream (launcher.adapters.redis_webauth)."""
        return redact(session)

    def require_admin(self, actor: Actor) -> None:
        self._require(actor, Permission.MANAGE_NOTEBOOKS)

    @staticmethod
    def _require(actor: Actor, permission: Permission) -> None:
        if not authorize(actor, permission):
            raise PermissionDenied(f"{actor.name} ({actor.role.value}) lacks {permission.value}")

    def templates(self) -> list[str]:
        return available_templates(self.settings.templates_dir)

    def template_views(self) -> list[Template]:
        """The templates with their titles and descriptions, for the console's cards."""
        return [template(self.settings.templates_dir, name) for name in self.templates()]

    # -- views ------------------------------------------------------------------------------
    def my_notebook(self, actor: Actor, user: str | None = None) -> SessionView | None:
        """The user's live session, else their most recent one, as they see it (with their workspace)."""
        owner = validate_user_id(actor.name if user is None else user)
        if not may_act_on(actor, owner):
            raise PermissionDenied(f"{actor.name} may not see {owner}'s session")
        session = self.store.latest_session_for(owner)
        if session is None:
            return None
        return session_view(
            session,
            self.settings,
            utcnow(),
            queue_position=self.store.queue_position(session),
            usage=self.store.usage(owner),
            host_down=session.host in self._down_hosts(),
        )

    def session_views(self, actor: Actor) -> list[SessionView]:
        """Every live session, for admins (no secret in any of them)."""
        now, down = utcnow(), self._down_hosts()
        return [
            session_view(s, self.settings, now, queue_position=self.store.queue_position(s), host_down=s.host in down)
            for s in self.list_sessions(actor)
        ]

    # -- commands ---------------------------------------------------------------------------
    def profiles_for(self, actor: Actor) -> list[str]:
        """The profiles this actor may launch with (the default first)."""
        names = [n for n, p in self.settings.profiles.items() if actor.role.value in p.roles]
        return sorted(names, key=lambda n: (n != self.settings.default_profile, n))

    def launch(
        self,
        actor: Actor,
        template: str,
        user: str | None = None,
        *,
        profile: str | None = None,
        name: str | None = None,
        queue: bool = True,
        snapshot: str = "",
        pinned: dict[str, str] | None = None,
    ) -> Session:
        """Record a launch for ``user`` (default: the actor) and, once admitted, enqueue its start.

        The launch waits in the admission queue while no host has room for its profile (``queue=False``
        refuses instead); every launch this admits (its own, or earlier ones it let through) is sent to its host.
        """
        self._require(actor, Permission.LAUNCH_NOTEBOOKS)
        owner = validate_user_id(actor.name if user is None else user)
        if not may_act_on(actor, owner):
            raise PermissionDenied(f"{actor.name} may not launch a notebook for {owner}")
        resolve_template(self.settings.templates_dir, template)
        chosen = validate_profile_name(profile or self.settings.default_profile, list(self.settings.profiles))
        spec = self.settings.profile(chosen)
        if actor.role.value not in spec.roles:
            raise PermissionDenied(f"the {chosen!r} profile is for {' and '.join(spec.roles)} roles only")
        if not re.fullmatch(r"|legacy|[0-9a-f]{16}", snapshot):
            raise InvalidRequest(
                f"invalid data snapshot {snapshot[:20]!r}: use an id from 'python -m launcher.snapshots list'"
            )
        label = validate_session_name(name if name else template.replace("_", "-"))
        self._check_quota(owner)
        session = Session(
            id=new_session_id(),
            user=owner,
            template=template,
            name=label,
            profile=chosen,
            cpus=spec.cpus,
            mem_bytes=spec.mem_bytes,
            pids_limit=spec.pids_limit,
            token=new_token(),
            snapshot=snapshot,
            **(pinned or {}),
        )
        session, admitted = self.store.launch(session, actor=str(self._by(actor, owner)), queue=queue)
        others = [s for s in admitted if s.id != session.id]
        dispatch_starts(self.dispatcher, others)  # a failed dispatch of theirs: the deadline sweep resends it
        if any(s.id == session.id for s in admitted):
            session = next(s for s in admitted if s.id == session.id)
            try:
                self.dispatcher.start(session)
            except LauncherError as exc:  # the end state first: no seat, no lock left behind
                fail(self.store, None, session.id, By(ActorKind.LAUNCHER), Reason.DISPATCH_FAILED, exc.user_message)
                raise
        return self._visible(actor, session)

    def relaunch(self, actor: Actor, session_id: str, *, name: str | None = None, queue: bool = True) -> Session:
        """ "Relaunch exactly": a new session with what an earlier one ran on, from its record: the same image (by ID),
        data snapshot, template version (by hash) and profile. The template version is copied into the workspace
        beside the user's own copy (``<template>@<hash>.ipynb``)."""
        old = self.store.get(session_id)
        if old is None or not may_act_on(actor, old.user):
            raise NotFound(f"no session {session_id!r} to relaunch")
        record = old.record
        image, template_sha, snapshot = record.get("image_id", ""), record.get("template_sha256", ""), old.snapshot
        if not image.startswith("sha256:") or not template_sha or not snapshot:
            raise InvalidRequest(f"session {session_id} has no complete record (it never started): launch it again")
        label = name or (old.label if not old.status.live else f"{old.label}-again")
        launched = self.launch(
            actor,
            old.template,
            user=old.user,
            profile=old.profile,
            name=label[:40],
            queue=queue,
            snapshot=snapshot,
            pinned={"image": image, "template_sha256": template_sha},
        )
        self.store.record_event(
            "relaunch", user=old.user, actor=str(self._by(actor, old.user)), detail=f"{launched.id} from {old.id}"
        )
        return launched

    def admit(self) -> list[Session]:
        """Admit waiting launches while hosts have room (any process may; a worker does after each stop)."""
        return admit_waiting(self.store, self.dispatcher)

    @staticmethod
    def _by(actor: Actor, owner: str) -> By:
        return By(ActorKind.USER if actor.name == owner else ActorKind.ADMIN, actor.name)

    def _check_quota(self, owner: str) -> None:
        """Refuse a launch while a measured (not filesystem-enforced) workspace is over its quota."""
        usage = self.store.usage(owner)
        if usage is not None and not usage.enforced and usage.over:
            raise LimitReached(
                f"your workspace holds {usage.used_bytes / 2**30:.1f} GB, over its quota of "
                f"{usage.limit_bytes / 2**30:.0f} GB: delete or move files (ask an administrator for help) "
                "and launch again"
            )

    def workspace_usage(self, actor: Actor, user: str | None = None) -> WorkspaceUsage | None:
        """The user's last measured workspace usage against the quota."""
        owner = validate_user_id(actor.name if user is None else user)
        if not may_act_on(actor, owner):
            raise PermissionDenied(f"{actor.name} may not see {owner}'s workspace")
        return self.store.usage(owner)

    def stop(self, actor: Actor, user: str | None = None, *, session_id: str | None = None) -> Session:
        """Ask the owning host to stop ``user``'s live session (or the one with ``session_id``)."""
        if session_id is not None:
            target = self.store.get(session_id)
            if target is None or target.status in TERMINAL_STATUSES:
                raise NotFound(f"no live session {session_id!r}")
        else:
            owner = validate_user_id(actor.name if user is None else user)
            target = self.store.live_session_for(owner)
            if target is None:
                raise NotFound(f"{owner} has no live notebook session")
        if not may_act_on(actor, target.user):
            raise PermissionDenied(f"{actor.name} may not stop {target.user}'s session")
        reason = Reason.USER if actor.name == target.user else Reason.ADMIN
        session = request_stop(self.store, self.dispatcher, target.id, self._by(actor, target.user), reason)
        return self._visible(actor, session)

    def stop_all(self, actor: Actor) -> str:
        """Ask every live session to stop (each through the one stop path); returns the batch id whose
        progress ``stop_all_progress`` reports."""
        self._require(actor, Permission.MANAGE_NOTEBOOKS)
        batch = new_session_id()
        by = By(ActorKind.ADMIN, actor.name)
        for session in self.store.list_live():
            if session.status == SessionStatus.STOPPING:
                continue
            try:
                request_stop(self.store, self.dispatcher, session.id, by, Reason.ADMIN, batch=batch)
            except (Conflict, NotFound):
                continue  # it ended meanwhile
        return batch

    def stop_all_progress(self, actor: Actor, batch: str) -> StopAllProgress:
        """How far a stop-all has got, read from the sessions themselves."""
        self._require(actor, Permission.MANAGE_NOTEBOOKS)
        members = self.store.batch_members(batch)
        done = sum(1 for s in members if not s.status.live)
        return StopAllProgress(batch=batch, total=len(members), done=done)

    def set_max_age_exempt(self, actor: Actor, session_id: str, exempt: bool = True) -> Session:
        """An admin exempts a session from the maximum age (or returns it to it); audited."""
        self._require(actor, Permission.MANAGE_NOTEBOOKS)
        command = SetMaxAgeExempt(by=By(ActorKind.ADMIN, actor.name), reason=Reason.EXEMPT, exempt=exempt)
        return self._visible(actor, self.store.apply(session_id, command))

    def keep_alive(self, actor: Actor, session_id: str | None = None) -> Session:
        """The owner says "keep running": counts as activity now (recorded in the audit trail)."""
        self._require(actor, Permission.LAUNCH_NOTEBOOKS)
        if session_id is not None:
            session = self.store.get(session_id)
            if session is not None and session.user != actor.name:
                session = None
        else:
            session = self.store.live_session_for(validate_user_id(actor.name))
        if session is None or session.status != SessionStatus.RUNNING:
            raise NotFound(f"{actor.name} has no running notebook session")
        session = self.store.apply(session.id, KeepAlive(by=By(ActorKind.USER, actor.name), reason=Reason.KEEPALIVE))
        return self._visible(actor, session)

    def my_sessions(self, actor: Actor, user: str | None = None) -> list[SessionView]:
        """The user's live sessions (oldest first) as they see them, each with its queue place when waiting."""
        owner = validate_user_id(actor.name if user is None else user)
        if not may_act_on(actor, owner):
            raise PermissionDenied(f"{actor.name} may not see {owner}'s sessions")
        now, usage, down = utcnow(), self.store.usage(owner), self._down_hosts()
        return [
            session_view(
                s,
                self.settings,
                now,
                queue_position=self.store.queue_position(s),
                usage=usage,
                host_down=s.host in down,
            )
            for s in self.store.live_sessions_for(owner)
        ]

    def _down_hosts(self) -> set[str]:
        return {h.name for h in self.store.hosts() if h.state.value == "down"}

    def wait_estimate(self, position: int | None) -> timedelta | None:
        """About how long a launch at ``position`` in the queue waits, from how fast the queue moved lately."""
        if not position:
            return None
        at, value = self._interval
        if time.monotonic() - at >= TYPICAL_CACHE_S / 6:
            value = admission_interval(reversed(self.store.audit(limit=1000)))
            self._interval = (time.monotonic(), value)
        return value * position if value is not None else None

    # -- capacity (admins) -------------------------------------------------------------------
    def hosts(self, actor: Actor) -> list[HostInfo]:
        self._require(actor, Permission.MANAGE_NOTEBOOKS)
        return self.store.hosts()

    def drain(self, actor: Actor, host: str, draining: bool = True) -> HostInfo:
        """Drain a host (no new sessions; its sessions run out) or take it back; audited."""
        self._require(actor, Permission.MANAGE_NOTEBOOKS)
        info = self.store.set_draining(host, draining)
        self.store.record_event("drain" if draining else "undrain", user="", actor=f"admin:{actor.name}", detail=host)
        if not draining:
            self.admit()
        return info

    def forget_host(self, actor: Actor, host: str) -> None:
        """Remove a decommissioned host from the registry (refused while sessions are placed on it); audited."""
        self._require(actor, Permission.MANAGE_NOTEBOOKS)
        self.store.forget_host(host)
        self.store.record_event("forget_host", user="", actor=f"admin:{actor.name}", detail=host)

    def queue(self, actor: Actor) -> list[Session]:
        """The admission queue, first in line first (admins)."""
        self._require(actor, Permission.MANAGE_NOTEBOOKS)
        return [self._visible(actor, s) for s in self.store.waiting()]

    def queue_stats(self, actor: Actor) -> dict[str, float]:
        self._require(actor, Permission.MANAGE_NOTEBOOKS)
        return self.store.queue_stats()

    def typical_launch_time(self) -> timedelta | None:
        """The median launch-to-running time of recent launches (from the audit stream; cached briefly)."""
        at, value = self._typical
        if time.monotonic() - at < (TYPICAL_CACHE_S if value is not None else TYPICAL_CACHE_S / 6):
            return value
        value = typical_launch(reversed(self.store.audit(limit=1000)))
        self._typical = (time.monotonic(), value)
        return value

    def unseen_end(self, actor: Actor, view: SessionView | None) -> bool:
        """Whether ``view`` (the actor's latest session) ended after they saw it live in the console and they
        have not been told yet; records what they see now (a live session; an end being told)."""
        if view is None or view.user != actor.name:
            return False
        marks = self.store.notice_marks(actor.name)
        if view.live:
            if marks.get("live") != view.id:
                self.store.mark_notice(actor.name, "live", view.id)
            return False
        if marks.get("live") != view.id or marks.get("told") == view.id:
            return False
        self.store.mark_notice(actor.name, "told", view.id)
        return True

    # -- queries ----------------------------------------------------------------------------
    def session_for(self, actor: Actor, user: str | None = None) -> Session | None:
        """The user's live session, else their most recent one."""
        owner = validate_user_id(actor.name if user is None else user)
        if not may_act_on(actor, owner):
            raise PermissionDenied(f"{actor.name} may not see {owner}'s session")
        session = self.store.latest_session_for(owner)
        return self._visible(actor, session) if session else None

    def get(self, actor: Actor, session_id: str) -> Session:
        session = self.store.require(session_id)
        if not may_act_on(actor, session.user):
            raise PermissionDenied(f"{actor.name} may not see session {session_id}")
        return self._visible(actor, session)

    def queue_position(self, actor: Actor, session: Session) -> int | None:
        """1-based position of a queued session among the queued sessions of its host."""
        if not may_act_on(actor, session.user):
            raise PermissionDenied(f"{actor.name} may not see {session.user}'s session")
        return self.store.queue_position(session)

    def list_sessions(self, actor: Actor, *, live_only: bool = True) -> list[Session]:
        self._require(actor, Permission.MANAGE_NOTEBOOKS)
        sessions = self.store.list_live() if live_only else self.store.list_recent()
        return [self._visible(actor, s) for s in sessions]

    def audit(self, actor: Actor, *, user: str | None = None, limit: int = 200) -> list[AuditEvent]:
        self._require(actor, Permission.MANAGE_NOTEBOOKS)
        return self.store.audit(limit=limit, user=user)

    def wait(
        self, actor: Actor, session_id: str, until: set[SessionStatus], timeout: float, poll: float = 0.02
    ) -> Session:
        """Poll the store until the session reaches one of ``until`` (or a terminal state)."""
        deadline = time.monotonic() + timeout
        while True:
            session = self.get(actor, session_id)
            if session.status in until or session.status in TERMINAL_STATUSES:
                return session
            if time.monotonic() > deadline and session.status == SessionStatus.WAITING:
                place = self.store.queue_position(session)
                raise RuntimeUnavailable(
                    f"session {session_id} is still waiting for room (number {place} in the queue) after "
                    f"{timeout:.0f} s; it stays in the queue (cancel it with: launcher stop --session {session_id})"
                )
            if time.monotonic() > deadline:
                raise RuntimeUnavailable(
                    f"session {session_id} is still {session.status.value} after {timeout:.0f} s; "
                    f"is a worker running for host {session.host!r}?"
                )
            time.sleep(poll)
