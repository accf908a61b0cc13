"""One settings model for every process (console, CLI, worker, beat).

Built from ``LAUNCHER_*`` environment variables by whoever starts the process and passed in;
nothing here is constructed at import time. ``docs/configuration.md`` documents every field
(a test checks that it does).
"""

from __future__ import annotations

import json
import os
import re
import ssl
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

# Secrets have no default: empty means "not configured". scripts/start.sh and scripts/compose.sh generate
# them on first start. These values were once development defaults and are public: refused everywhere.
_PUBLIC_SECRETS = {"flower-dev-password", "dev-cookie-secret-change-me"}
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class MissingSecret(RuntimeError):
    """A process needs a secret that is not configured; it refuses to go on rather than use an empty one."""


class RequiredSecret(SecretStr):
    """A secret that is empty until configured; reading an empty one raises ``MissingSecret``.

    So an unconfigured cookie key or Flower password can never sign or check anything.
    """

    def __init__(self, secret_value: str, env_name: str = "") -> None:
        super().__init__(secret_value)
        self._env_name = env_name

    def get_secret_value(self) -> str:
        if not self._secret_value:
            raise MissingSecret(
                f"{self._env_name or 'a required secret'} is not set: refusing to run without it "
                "(scripts/start.sh keeps generated secrets in var/secrets.env; compose: scripts/compose.sh up)"
            )
        return self._secret_value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and self._secret_value == other._secret_value

    def __hash__(self) -> int:
        return hash(self._secret_value)


_SIZE = r"^[0-9]+[kmg]?$"


def parse_size(text: str) -> int:
    """Bytes in a Docker-style size: ``512m``, ``8g``, ``1024`` (bytes)."""
    match = re.fullmatch(r"([0-9]+)([kmg]?)", text.strip().lower())
    if match is None:
        raise ValueError(f"invalid size {text!r}: use a number with k, m or g")
    return int(match.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match.group(2)]


class Profile(BaseModel):
    """A named set of resources a session reserves on its host and is limited to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpus: float = Field(gt=0, le=256)
    mem_limit: str = Field(pattern=_SIZE)
    pids_limit: int = Field(512, ge=32)
    roles: list[Literal["admin", "researcher"]] = ["admin", "researcher"]
    description: str = ""

    @property
    def mem_bytes(self) -> int:
        return parse_size(self.mem_limit)

    @property
    def millicpus(self) -> int:
        return round(self.cpus * 1000)


DEFAULT_PROFILES = {
    "standard": Profile(cpus=2.0, mem_limit="4g", pids_limit=512, description="2 CPUs, 4 GB"),
    "large": Profile(cpus=4.0, mem_limit="16g", pids_limit=1024, roles=["admin"], description="4 CPUs, 16 GB"),
}
_NAME = r"^[a-z0-9][a-z0-9-]{0,31}$"


class Settings(BaseSettings):
    """Launcher configuration; every field can be set as ``LAUNCHER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="LAUNCHER_", extra="ignore", frozen=True)

    mode: Literal["development", "production"] = "development"
    instance: str = Field("nbl", pattern=r"^[a-z][a-z0-9]{1,15}$")

    # Redis: Celery broker and session state. Every client connects with ``redis_dsn()``.
    redis_url: str = Field("redis://127.0.0.1:6379/0", pattern=r"^(redis|rediss|unix)://")
    redis_password: SecretStr = SecretStr("")
    redis_ca_file: Path | None = None

    # Capacity and placement (docs/operations.md, "Capacity"). Hosts register themselves in Redis: each
    # worker advertises what its engine has (CPUs, memory) minus the reserve; sessions reserve a profile.
    host_name: str = Field("local", pattern=_NAME)
    max_sessions: int = Field(5, ge=1)
    max_sessions_per_host: int = Field(5, ge=1)
    max_sessions_per_user: int = Field(1, ge=1, le=20)
    max_user_cpus: float | None = Field(None, gt=0)  # total CPUs of one user's live sessions
    profiles: dict[str, Profile] = DEFAULT_PROFILES
    default_profile: str = "standard"
    host_reserve_cpus: float = Field(0.5, ge=0)
    host_reserve_mem: str = Field("2g", pattern=_SIZE)
    # CPU limits are ceilings the kernel shares out (CFS quota), so a host may promise more CPUs than it has;
    # memory is not overcommitted: a session's memory limit is reserved in full.
    host_cpu_overcommit: float = Field(4.0, ge=1.0, le=64.0)
    host_beacon_interval_s: float = Field(5.0, gt=0)
    host_down_after_s: float = Field(30.0, gt=0)
    queue_wait_deadline_s: float = Field(1800.0, gt=0)
    # The warm pool (workers/pool.py): pre-booted notebook servers per host and profile, claimed by a launch.
    pool_sizes: dict[str, int] = {"standard": 2}
    pool_slots_dir: Path = REPO_ROOT / "var" / "pool-slots"

    # The notebook container.
    notebook_image: str = "launcher-notebook:latest"
    # JupyterLab's assets, copied out of each notebook image once and served by the entry point on one shared
    # origin (static.<notebook domain>), so a browser downloads them once per image, not once per session.
    shared_lab_static: bool = True
    lab_static_dir: Path = REPO_ROOT / "var" / "lab-static"
    # The image's Python packages, copied out of each notebook image once and bound read-only into its containers:
    # no FUSE storage driver between Jupyter's imports and the files (workers/pyprefix.py).
    python_prefix_bind: bool = True
    python_prefix_dir: Path = REPO_ROOT / "var" / "python-prefix"
    image_retention_days: float = Field(30.0, ge=0)  # python -m launcher.images prune keeps younger images
    data_dir: Path = REPO_ROOT / "var" / "data"  # the data root: snapshots/<id>/, current (launcher.snapshots)
    snapshot_keep_recent: int = Field(3, ge=0)  # python -m launcher.snapshots prune keeps this many newest
    templates_dir: Path = REPO_ROOT / "notebooks" / "templates"
    # Every template version a session started from, by content hash (for "relaunch exactly").
    template_store_dir: Path = REPO_ROOT / "var" / "template-store"
    library_dir: Path = REPO_ROOT / "notebooks" / "lib"
    workspaces_dir: Path = REPO_ROOT / "var" / "workspaces"
    sessions_dir: Path = REPO_ROOT / "var" / "sessions"
    tmp_size: str = Field("1g", pattern=r"^[0-9]+[kmg]?$")
    # Report runs (launcher/reports.py, workers/reports.py): a template run unattended with parameters.
    reports_dir: Path = REPO_ROOT / "var" / "reports"  # <user>/<run>/: the executed notebook, HTML, results.json
    report_timeout_s: float = Field(1800.0, gt=0)  # a run still going after this is stopped and failed
    report_concurrency: int = Field(1, ge=1, le=32)  # report containers at once on one host
    report_queue_deadline_s: float = Field(3600.0, gt=0)  # a run not started within this fails
    report_output_max: str = Field("512m", pattern=_SIZE)  # a run's folder larger than this is stopped
    report_schedule_min_s: float = Field(3600.0, gt=0)  # the shortest schedule interval a user may ask for
    report_schedule_tick_s: float = Field(30.0, gt=0)  # how often Beat starts the runs that are due
    report_keep_per_user: int = Field(200, ge=1)  # run records kept per user (older ones are pruned)
    report_max_open_per_user: int = Field(5, ge=1)  # a user's runs queued or running at once
    report_max_schedules_per_user: int = Field(10, ge=0)
    repro_check_interval_s: float = Field(24 * 3600.0, gt=0)  # how often past runs are re-run and compared
    repro_check_sample: int = Field(2, ge=0)  # how many past runs each check re-runs (0: none)
    # Workspace quotas (workers/quota.py): 0 switches them off.
    workspace_quota_gb: float = Field(20.0, ge=0)
    workspace_quota_enforce: Literal["auto", "filesystem", "measure"] = "auto"
    workspace_images_dir: Path = REPO_ROOT / "var" / "workspace-images"
    workspace_measure_interval_s: float = Field(600.0, gt=0)
    workspace_warn_fraction: float = Field(0.9, gt=0, le=1)
    # Notebooks run as this uid/gid: not a login account on the host (a worker refuses one that is).
    notebook_uid: int = Field(59000, ge=1)
    notebook_gid: int = Field(59000, ge=1)
    proxy_gid: int = Field(33, ge=0)

    # The entry point of this host. Each session is served on its own origin,
    # ``<scheme>://<session id>.<host of public_url>:<port>/`` (``*.localhost`` resolves to loopback
    # in browsers with no DNS); the console must be on another site.
    public_url: str = Field("http://nb.localhost:8080", pattern=r"^https?://[a-z0-9.-]+(:[0-9]{1,5})?/?$")
    entrypoint_listen: str = "127.0.0.1:8080"
    entry_cache_s: float = Field(0.5, ge=0, le=1.0)
    open_code_ttl_s: int = Field(60, ge=5, le=300)
    # TLS at the entry point itself: a certificate for the notebook domain and its wildcard
    # (``*.<domain>``); public_url must then be https. Leave unset when a proxy in front terminates TLS.
    entrypoint_tls_cert: Path | None = None
    entrypoint_tls_key: Path | None = None

    # Timings.
    start_timeout_s: float = Field(120.0, gt=0)
    # Seconds a notebook gets to exit after SIGTERM before SIGKILL. 0 (the default): killed at once; Jupyter saves
    # nothing on the way out (notebooks are saved by the browser), so waiting only delays the stop.
    stop_timeout_s: int = Field(0, ge=0)
    idle_timeout_s: float = Field(4 * 3600.0, gt=0)
    max_age_s: float | None = None
    # Every non-terminal state has a deadline (launcher.policy.deadline_due, swept by Beat).
    queued_deadline_s: float = Field(300.0, gt=0)
    starting_deadline_s: float = Field(300.0, gt=0)
    stopping_deadline_s: float = Field(120.0, gt=0)
    resend_after_s: float = Field(30.0, gt=0)
    deadline_sweep_interval_s: float = Field(15.0, gt=0)
    heartbeat_interval_s: float = Field(60.0, gt=0)
    reap_interval_s: float = Field(300.0, gt=0)
    reconcile_interval_s: float = Field(600.0, gt=0)
    warn_before_reap_s: float = Field(15 * 60.0, ge=0)
    broker_visibility_timeout_s: int = Field(600, ge=5)
    task_pickup_timeout_s: float = Field(30.0, gt=0)
    session_record_ttl_s: int = Field(7 * 24 * 3600, ge=60)

    # Workers.
    worker_concurrency: int = Field(8, ge=1)
    audit_maxlen: int = Field(100_000, ge=100)

    # Console and operators.
    feature_notebook_launcher: bool = True
    auth_mode: Literal["password", "oidc"] = "password"
    login_ttl_s: int = Field(12 * 3600, ge=60)
    # Console login: password guessing is throttled per user name and per client address.
    login_throttle_limit: int = Field(5, ge=1)
    login_throttle_address_limit: int = Field(20, ge=1)
    login_throttle_window_s: int = Field(15 * 60, ge=1)
    login_lockout_s: int = Field(60, ge=1)
    console_url: str = "http://127.0.0.1:8501"
    oidc_metadata_url: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: SecretStr = SecretStr("")
    oidc_roles_claim: str = "roles"
    oidc_user_claim: str = "sub"
    roles_file: Path | None = None
    users_file: Path = REPO_ROOT / "var" / "users.json"
    cookie_secret: SecretStr = SecretStr("")
    flower_listen: str = "127.0.0.1:5555"
    flower_user: str = "operator"
    flower_password: SecretStr = SecretStr("")
    # Bearer token of the console's /metrics (Prometheus); empty: /metrics answers 404.
    metrics_token: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _profiles_valid(self) -> Settings:
        for name in self.profiles:
            if not re.fullmatch(_NAME, name):
                raise ValueError(f"invalid profile name {name!r}: use lowercase letters, digits and '-'")
        for name, size in self.pool_sizes.items():
            if name not in self.profiles or not 0 <= size <= 32:
                raise ValueError(f"LAUNCHER_POOL_SIZES: {name!r} must be a profile, its size 0-32")
        if self.default_profile not in self.profiles:
            raise ValueError(f"LAUNCHER_DEFAULT_PROFILE {self.default_profile!r} is not one of LAUNCHER_PROFILES")
        parse_size(self.host_reserve_mem)
        return self

    def profile(self, name: str | None) -> Profile:
        """The named profile (the default when None); ``KeyError`` when there is none."""
        return self.profiles[name or self.default_profile]

    @model_validator(mode="after")
    def _entrypoint_tls(self) -> Settings:
        if (self.entrypoint_tls_cert is None) != (self.entrypoint_tls_key is None):
            raise ValueError("set both LAUNCHER_ENTRYPOINT_TLS_CERT and LAUNCHER_ENTRYPOINT_TLS_KEY, or neither")
        if self.entrypoint_tls_cert is not None and not self.public_url.startswith("https://"):
            raise ValueError("with LAUNCHER_ENTRYPOINT_TLS_CERT, LAUNCHER_PUBLIC_URL must be https://...")
        domain = self.notebook_domain
        if self.public_url.startswith("http://") and not (domain == "localhost" or domain.endswith(".localhost")):
            raise ValueError(
                "LAUNCHER_PUBLIC_URL must be https:// outside *.localhost: browsers keep the entry point's "
                "__Host- cookies only over TLS (a wildcard certificate at the entry point or at a proxy in front)"
            )
        return self

    @field_validator("cookie_secret", "flower_password", mode="after")
    @classmethod
    def _required_secret(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        raw, env_name = value.get_secret_value(), f"LAUNCHER_{str(info.field_name).upper()}"
        if raw in _PUBLIC_SECRETS:
            raise ValueError(f"{env_name} is a public development value: use a generated secret")
        return RequiredSecret(raw, env_name)

    @field_serializer("cookie_secret", "flower_password", when_used="json")
    def _masked(self, value: SecretStr) -> str:
        return "**********" if len(value) else ""

    @classmethod
    def of_checkout(cls, root: Path = REPO_ROOT) -> Settings:
        """Settings for an operator tool run from a shell: the environment, then this checkout's
        ``var/launcher.env`` and ``var/secrets.env`` (as ``scripts/start.sh`` sets them; the environment wins)."""
        files = [root / "var" / "secrets.env", root / "var" / "launcher.env"]  # the later file wins
        readable = [f for f in files if f.is_file() and os.access(f, os.R_OK)]
        return cls(_env_file=readable or None)

    def require_secrets(self, *names: str) -> None:
        """Raise ``MissingSecret`` naming each of these secret fields that is empty (for a process's start)."""
        missing = [f"LAUNCHER_{name.upper()}" for name in names if not len(getattr(self, name))]
        if missing:
            raise MissingSecret(
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: refusing to start without "
                f"{'it' if len(missing) == 1 else 'them'} "
                "(scripts/start.sh keeps generated secrets in var/secrets.env; compose: scripts/compose.sh up)"
            )

    def redis_dsn(self) -> str:
        """The Redis URL every client connects with: ``redis_url`` plus the password and the TLS options.

        Works as is with ``redis.Redis.from_url`` and ``redis.asyncio.Redis.from_url`` (and Celery, see
        ``celeryconfig``). A password written inside ``LAUNCHER_REDIS_URL`` wins over ``LAUNCHER_REDIS_PASSWORD``.
        Raises ``MissingSecret`` when there is no password in production mode, or for a Redis not on loopback.
        """
        parts = urlsplit(self.redis_url)
        userinfo, _, hostport = parts.netloc.rpartition("@")
        username, _, url_password = userinfo.partition(":")
        password = unquote(url_password) or self.redis_password.get_secret_value()
        if not password and (self.mode == "production" or (parts.hostname or "") not in _LOOPBACK_HOSTS | {""}):
            where = "in production mode" if self.mode == "production" else f"for a Redis at {parts.hostname}"
            raise MissingSecret(
                f"LAUNCHER_REDIS_PASSWORD is not set: Redis clients refuse to connect without a password {where} "
                "(scripts/start.sh keeps the generated one in var/secrets.env)"
            )
        netloc = hostport
        if password:
            netloc = f"{quote(unquote(username), safe='')}:{quote(password, safe='')}@{hostport}"
        query = dict(parse_qsl(parts.query))
        if parts.scheme == "rediss":
            query.setdefault("ssl_cert_reqs", "required")
            if self.redis_ca_file is not None:
                query["ssl_ca_certs"] = str(self.redis_ca_file)
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))

    def redis_ssl(self) -> dict[str, Any] | None:
        """TLS options for Celery's broker and result backend (``broker_use_ssl``), None for plain Redis."""
        if not self.redis_url.startswith("rediss://"):
            return None
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        if self.redis_ca_file is not None:
            options["ssl_ca_certs"] = str(self.redis_ca_file)
        return options

    def session_origin(self, session_id: str) -> str:
        """The origin a session is served on: its id as a subdomain of this host's entry point."""
        scheme, _, rest = self.public_url.rstrip("/").partition("://")
        return f"{scheme}://{session_id}.{rest}"

    @property
    def static_origin(self) -> str:
        """The origin of the assets every session shares (JupyterLab's, ``workers.labstatic``)."""
        return self.session_origin("static")

    @property
    def notebook_domain(self) -> str:
        """The host part of ``public_url``: sessions are its subdomains."""
        return self.public_url.split("://", 1)[1].rstrip("/").split(":", 1)[0]

    def queue_for_host(self, host: str) -> str:
        """The Celery queue of one Docker host's worker (named per instance: installations may share a Redis)."""
        return f"{self.instance}.host.{host}"

    @property
    def host_queue(self) -> str:
        """The Celery queue this host's worker consumes."""
        return self.queue_for_host(self.host_name)

    @property
    def control_queue(self) -> str:
        """The queue of tasks any worker may run (stop-all, reap)."""
        return f"{self.instance}.control"

    @property
    def worker_queues(self) -> str:
        """The ``-Q`` argument for this host's worker."""
        return f"{self.host_queue},{self.control_queue}"

    def to_env(self) -> dict[str, str]:
        """The ``LAUNCHER_*`` environment that reproduces these settings in a child process."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value() if len(value) else ""
            elif isinstance(value, list):
                value = ",".join(value)
            elif isinstance(value, dict):
                value = json.dumps(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"LAUNCHER_{name.upper()}"] = str(value)
        return env
