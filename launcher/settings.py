"""One settings model for every process (console, CLI, worker, beat).

Built from ``LAUNCHER_*`` environment variables by whoever starts the process and passed in;
nothing here is constructed at import time. ``docs/configuration.md`` documents every field
(a test checks that it does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

# Values that are fine on a laptop and unacceptable in production.
_DEV_SECRETS = {"flower_password": "flower-dev-password", "cookie_secret": "dev-cookie-secret-change-me"}


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Launcher configuration; every field can be set as ``LAUNCHER_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="LAUNCHER_", extra="ignore", frozen=True)

    mode: Literal["development", "production"] = "development"
    instance: str = Field("nbl", pattern=r"^[a-z][a-z0-9]{1,15}$")

    # Redis: Celery broker and session state.
    redis_url: str = "redis://127.0.0.1:6379/0"

    # Placement.
    hosts: Annotated[list[str], NoDecode] = ["local"]
    host_name: str = Field("local", pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    max_sessions: int = Field(5, ge=1)
    max_sessions_per_host: int = Field(5, ge=1)

    # The notebook container.
    notebook_image: str = "launcher-notebook:latest"
    data_dir: Path = REPO_ROOT / "var" / "data"
    templates_dir: Path = REPO_ROOT / "notebooks" / "templates"
    library_dir: Path = REPO_ROOT / "notebooks" / "lib"
    workspaces_dir: Path = REPO_ROOT / "var" / "workspaces"
    sessions_dir: Path = REPO_ROOT / "var" / "sessions"
    cpus: float = Field(2.0, gt=0)
    mem_limit: str = Field("8g", pattern=r"^[0-9]+[kmg]?$")
    pids_limit: int = Field(512, ge=32)
    tmp_size: str = Field("1g", pattern=r"^[0-9]+[kmg]?$")
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

    # Timings.
    start_timeout_s: float = Field(120.0, gt=0)
    stop_timeout_s: int = Field(10, ge=0)
    idle_timeout_s: float = Field(4 * 3600.0, gt=0)
    max_age_s: float | None = None
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
    console_url: str = "http://127.0.0.1:8501"
    oidc_metadata_url: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: SecretStr = SecretStr("")
    oidc_roles_claim: str = "roles"
    oidc_user_claim: str = "sub"
    roles_file: Path | None = None
    users_file: Path = REPO_ROOT / "var" / "users.json"
    cookie_secret: SecretStr = SecretStr(_DEV_SECRETS["cookie_secret"])
    flower_listen: str = "127.0.0.1:5555"
    flower_user: str = "operator"
    flower_password: SecretStr = SecretStr(_DEV_SECRETS["flower_password"])

    _split_hosts = field_validator("hosts", mode="before")(_split_csv)

    @field_validator("hosts")
    @classmethod
    def _hosts_valid(cls, hosts: list[str]) -> list[str]:
        if not hosts:
            raise ValueError("at least one host is required")
        for host in hosts:
            if not host or len(host) > 32 or not host.replace("-", "").isalnum() or host != host.lower():
                raise ValueError(f"invalid host name {host!r}: use lowercase letters, digits and '-'")
        return hosts

    @model_validator(mode="after")
    def _refuse_dev_secrets_in_production(self) -> Settings:
        if self.mode == "production":
            for name, dev_value in _DEV_SECRETS.items():
                if getattr(self, name).get_secret_value() == dev_value:
                    raise ValueError(f"LAUNCHER_{name.upper()} must be set to a real secret in production mode")
        return self

    def session_origin(self, session_id: str) -> str:
        """The origin a session is served on: its id as a subdomain of this host's entry point."""
        scheme, _, rest = self.public_url.rstrip("/").partition("://")
        return f"{scheme}://{session_id}.{rest}"

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
                value = value.get_secret_value()
            elif isinstance(value, list):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"LAUNCHER_{name.upper()}"] = str(value)
        return env
