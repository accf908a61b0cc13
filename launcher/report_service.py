"""Report runs for the console, the CLI and Beat: validate, authorize, record, send to a host.

A run is recorded ``queued`` with the host it goes to (the up, undrained host with the most room), then sent to
that host's worker, which runs the template in the notebook runtime (``workers.reports``). "Reproduce" is a run
pinned to what an earlier one ran on (image by ID, template version by hash, data snapshot, parameters); its
results are compared with the original's when it ends. Schedules are per user; Beat starts the due ones.
"""

from __future__ import annotations

import random
import re
import time
from datetime import timedelta
from typing import Protocol

from launcher.errors import (
    Conflict,
    InvalidRequest,
    LimitReached,
    NotFound,
    PermissionDenied,
    RuntimeUnavailable,
)
from launcher.models import Actor, HostState, Permission, Role, utcnow
from launcher.ports import ReportRepository, SessionRepository
from launcher.rbac import authorize, may_act_on
from launcher.reports import (
    RESERVED_PARAMS,
    ParamValue,
    ReportRun,
    ReportSchedule,
    ReportStatus,
    compare_results,
    describe_interval,
    new_run_id,
    parse_interval,
    template_parameters,
    validate_params,
)
from launcher.settings import Settings
from launcher.validation import available_templates, resolve_template, validate_user_id

SYSTEM = "launcher"


class ReportDispatcher(Protocol):
    def run_report(self, run_id: str, host: str) -> None: ...


class ReportService:
    def __init__(
        self, settings: Settings, store: ReportRepository, sessions: SessionRepository, dispatcher: ReportDispatcher
    ) -> None:
        self.settings = settings
        self.store = store
        self.sessions = sessions
        self.dispatcher = dispatcher

    # -- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _owner(actor: Actor, user: str | None) -> str:
        if not authorize(actor, Permission.LAUNCH_NOTEBOOKS):
            raise PermissionDenied(f"{actor.name} ({actor.role.value}) lacks {Permission.LAUNCH_NOTEBOOKS.value}")
        owner = validate_user_id(actor.name if user is None else user)
        if not may_act_on(actor, owner):
            raise PermissionDenied(f"{actor.name} may not run reports for {owner}")
        return owner

    def _host(self) -> str:
        """The up, undrained host with the most free CPUs (reports run beside sessions, at a lower CPU weight)."""
        hosts = [h for h in self.sessions.hosts() if h.state == HostState.UP]
        if not hosts:
            raise RuntimeUnavailable("no Docker host is up to run reports; try again shortly")
        return max(hosts, key=lambda h: (h.free_cpus, h.name)).name

    def parameters(self, template: str) -> dict[str, ParamValue]:
        """What a request may set: the template's parameters and their defaults (not the ones the launcher sets)."""
        found = template_parameters(resolve_template(self.settings.templates_dir, template))
        return {k: v for k, v in found.items() if k not in RESERVED_PARAMS}

    def templates(self) -> list[str]:
        return available_templates(self.settings.templates_dir)

    # -- runs ---------------------------------------------------------------------------------------
    def run(
        self,
        actor: Actor,
        template: str,
        params: dict[str, object] | None = None,
        *,
        user: str | None = None,
        snapshot: str = "",
        requested_by: str | None = None,
        schedule: str = "",
    ) -> ReportRun:
        """Record a run of ``template`` for ``user`` (default: the actor) and send it to a host."""
        owner = self._owner(actor, user)
        declared = template_parameters(resolve_template(self.settings.templates_dir, template))
        checked = validate_params(params or {}, declared)
        if not re.fullmatch(r"|legacy|[0-9a-f]{16}", snapshot):
            raise InvalidRequest(f"invalid data snapshot {snapshot[:20]!r}")
        return self._submit(
            ReportRun(
                id=new_run_id(),
                user=owner,
                template=template,
                params=checked,
                snapshot=snapshot,
                requested_by=requested_by or actor.name,
                schedule=schedule,
                **self._limits(),
            )
        )

    def _limits(self) -> dict[str, object]:
        profile = self.settings.profile(None)
        return {
            "profile": self.settings.default_profile,
            "cpus": profile.cpus,
            "mem_bytes": profile.mem_bytes,
            "pids_limit": profile.pids_limit,
        }

    def _submit(self, run: ReportRun) -> ReportRun:
        cap = self.settings.report_max_open_per_user
        if sum(1 for r in self.store.open_runs() if r.user == run.user) >= cap:
            raise LimitReached(f"{run.user} has {cap} report runs queued or running already: wait for one to end")
        run = self.store.create(run.model_copy(update={"host": self._host()}))
        self.store.audit("report_requested", run, actor=run.requested_by)
        try:
            self.dispatcher.run_report(run.id, run.host)
        except RuntimeUnavailable as exc:
            self.store.update(
                run.id, {ReportStatus.QUEUED}, status=ReportStatus.FAILED, error=exc.user_message, finished_at=utcnow()
            )
            raise
        return run

    def reproduce(self, actor: Actor, run_id: str, *, requested_by: str | None = None) -> ReportRun:
        """Run again exactly what ``run_id`` ran (its record: image ID, template version, snapshot, parameters)."""
        original = self.store.get(run_id)
        if original is None or not may_act_on(actor, original.user):
            raise NotFound(f"no report run {run_id[:20]!r}")
        self._owner(actor, original.user)
        record = original.record
        image, template_sha, snapshot = (
            record.get("image_id", ""),
            record.get("template_sha256", ""),
            record.get("snapshot", ""),
        )
        if original.status != ReportStatus.SUCCEEDED or not image.startswith("sha256:") or not template_sha:
            raise InvalidRequest(f"report run {run_id} did not succeed with a complete record: nothing to reproduce")
        return self._submit(
            ReportRun(
                id=new_run_id(),
                user=original.user,
                template=original.template,
                params=original.params,
                image=image,
                template_sha256=template_sha,
                snapshot=snapshot,
                reproduces=original.id,
                requested_by=requested_by or actor.name,
                profile=original.profile,
                cpus=original.cpus,
                mem_bytes=original.mem_bytes,
                pids_limit=original.pids_limit,
            )
        )

    def get(self, actor: Actor, run_id: str) -> ReportRun:
        run = self.store.get(run_id)
        if run is None or not may_act_on(actor, run.user):
            raise NotFound(f"no report run {run_id[:20]!r}")
        return run

    def runs(
        self, actor: Actor, user: str | None = None, *, everyone: bool = False, limit: int = 100
    ) -> list[ReportRun]:
        """The actor's runs (or a user's), newest first; ``everyone`` for admins."""
        if everyone:
            if not authorize(actor, Permission.MANAGE_NOTEBOOKS):
                raise PermissionDenied(f"{actor.name} may not see everyone's reports")
            return self.store.list_all(limit)
        owner = validate_user_id(actor.name if user is None else user)
        if not may_act_on(actor, owner):
            raise PermissionDenied(f"{actor.name} may not see {owner}'s reports")
        return self.store.list_for(owner, limit)

    def compare(self, actor: Actor, first: str, second: str) -> list[str]:
        """Where two runs' results differ (exactly)."""
        a, b = self.get(actor, first), self.get(actor, second)
        return compare_results(a.results, b.results, 0.0)

    def wait(self, actor: Actor, run_id: str, timeout: float, poll: float = 0.2) -> ReportRun:
        deadline = time.monotonic() + timeout
        while True:
            run = self.get(actor, run_id)
            if run.status.done:
                return run
            if time.monotonic() > deadline:
                raise RuntimeUnavailable(
                    f"report run {run_id} is still {run.status.value} after {timeout:.0f} s "
                    f"(on host {run.host!r}); it goes on: see it with 'launcher report show {run_id}'"
                )
            time.sleep(poll)

    # -- schedules ----------------------------------------------------------------------------------
    def add_schedule(
        self,
        actor: Actor,
        template: str,
        every: str,
        params: dict[str, object] | None = None,
        *,
        user: str | None = None,
    ) -> ReportSchedule:
        owner = self._owner(actor, user)
        declared = template_parameters(resolve_template(self.settings.templates_dir, template))
        seconds = parse_interval(every)
        cap = self.settings.report_max_schedules_per_user
        if len(self.store.schedules_for(owner)) >= cap:
            raise LimitReached(f"{owner} has {cap} schedules already: remove one first")
        if seconds < self.settings.report_schedule_min_s:
            raise InvalidRequest(f"a schedule runs at most {describe_interval(self.settings.report_schedule_min_s)}")
        schedule = ReportSchedule(
            id=new_run_id(),
            user=owner,
            template=template,
            params=validate_params(params or {}, declared),
            every_s=seconds,
        )
        self.store.add_schedule(schedule, first_at=time.time() + seconds)
        self.sessions.record_event(
            "report_scheduled",
            user=owner,
            actor=actor.name,
            detail=f"{schedule.id} {template} {describe_interval(seconds)}",
        )
        return schedule

    def schedules(self, actor: Actor, *, everyone: bool = False) -> list[tuple[ReportSchedule, float]]:
        if everyone:
            if not authorize(actor, Permission.MANAGE_NOTEBOOKS):
                raise PermissionDenied(f"{actor.name} may not see everyone's schedules")
            return self.store.schedules_for(None)
        return self.store.schedules_for(validate_user_id(actor.name))

    def remove_schedule(self, actor: Actor, schedule_id: str) -> None:
        schedule = self.store.get_schedule(schedule_id) if re.fullmatch(r"[a-z0-9]{12}", schedule_id) else None
        if schedule is None or not may_act_on(actor, schedule.user):
            raise NotFound(f"no schedule {schedule_id[:20]!r}")
        self.store.remove_schedule(schedule)
        self.sessions.record_event("report_unscheduled", user=schedule.user, actor=actor.name, detail=schedule.id)

    # -- Beat ---------------------------------------------------------------------------------------
    def run_due(self) -> list[ReportRun]:
        """Start every schedule that is due (each moved on to its next time first: a failure skips one run)."""
        started = []
        for schedule in self.store.take_due():
            owner = Actor(name=schedule.user, role=Role.RESEARCHER)
            try:
                run = self.run(
                    owner,
                    schedule.template,
                    dict(schedule.params),
                    requested_by=f"schedule:{schedule.id}",
                    schedule=schedule.id,
                )
            except (InvalidRequest, LimitReached, RuntimeUnavailable) as exc:  # template gone, user busy, no host
                self.sessions.record_event(
                    "report_schedule_failed",
                    user=schedule.user,
                    actor=SYSTEM,
                    detail=f"{schedule.id}: {exc.user_message}",
                )
                continue
            self.store.note_schedule_run(schedule, run.id)
            started.append(run)
        return started

    def check_sample(self, rng: random.Random | None = None) -> list[ReportRun]:
        """The reproducibility check: re-run a sample of past successful runs not checked within the interval;
        each re-run compares its results with the original's when it ends, and a drift shows on the Reports page."""
        size = self.settings.repro_check_sample
        if size == 0:
            return []
        recent = utcnow() - timedelta(seconds=self.settings.repro_check_interval_s)
        candidates = []
        for run in self.store.list_all(1000):
            if run.status != ReportStatus.SUCCEEDED or run.reproduces or not run.record.get("image_id"):
                continue
            check = self.store.get(run.checked) if run.checked else None
            if check is not None and check.created_at > recent:
                continue
            candidates.append(run)
        sampler = rng or random.Random()  # noqa: S311 - picks which runs to re-check, not a secret
        chosen = sampler.sample(candidates, min(size, len(candidates)))
        system = Actor.operator(SYSTEM)
        started = []
        for run in chosen:
            try:
                started.append(self.reproduce(system, run.id, requested_by="check"))
            except (InvalidRequest, LimitReached, RuntimeUnavailable):
                continue
        return started

    def sweep(self) -> dict[str, int]:
        """No run stuck in any outage: a queued run whose host went down is sent to another host; one not started
        within ``report_queue_deadline_s`` fails, and so does one still running past its timeout plus a minute
        (its host stopped reporting; the worker there stops the container itself when it can)."""
        now = utcnow()
        down = {h.name for h in self.sessions.hosts() if h.state != HostState.UP}
        moved = failed = 0
        for run in self.store.open_runs():
            age = (now - run.created_at).total_seconds()
            try:
                if run.status == ReportStatus.QUEUED and age > self.settings.report_queue_deadline_s:
                    why = f"not started within {self.settings.report_queue_deadline_s:.0f} s (no host took it)"
                    self.store.update(
                        run.id, {ReportStatus.QUEUED}, status=ReportStatus.FAILED, error=why, finished_at=now
                    )
                    self.store.audit("report_failed", run, actor=SYSTEM, detail=why)
                    failed += 1
                elif run.status == ReportStatus.QUEUED and run.host in down:
                    host = self._host()
                    if host != run.host:
                        self.store.update(run.id, {ReportStatus.QUEUED}, host=host)
                        self.dispatcher.run_report(run.id, host)
                        moved += 1
                elif run.status == ReportStatus.RUNNING and run.started_at is not None:
                    running = (now - run.started_at).total_seconds()
                    if running > self.settings.report_timeout_s + 60:
                        why = f"its host {run.host} stopped reporting on it"
                        self.store.update(
                            run.id, {ReportStatus.RUNNING}, status=ReportStatus.FAILED, error=why, finished_at=now
                        )
                        self.store.audit("report_failed", run, actor=SYSTEM, detail=why)
                        failed += 1
            except (RuntimeUnavailable, NotFound, Conflict):
                continue  # moved on meanwhile, or no host is up: the next sweep looks again
        return {"moved": moved, "failed": failed}
