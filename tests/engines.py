"""A second Docker engine on this machine, for tests of more than one Docker host.

``SecondEngine(root)`` starts a private ``dockerd`` beside the machine's own, sharing nothing but the kernel: its
own data root, exec root (with its own managed containerd), UNIX socket and pidfile, no bridge, no iptables
rules. It is stopped by the PID this process started, never by name.

Layout under ``root``::

    root/daemon.json   the empty ``{}`` config (so /etc/docker/daemon.json is not read)
    root/data/         --data-root: images and containers (kept across runs with ``keep_data=True``)
    root/dockerd.log   the daemon's output
    root/docker.pid    --pidfile (dockerd refuses to start while another dockerd holds it)
    root/exec/         --exec-root, and root/docker.sock, when ``root`` is short enough; otherwise both live in
                       a short /tmp/nbl-e2-<random>/ (UNIX socket paths are limited to 108 bytes, and the exec
                       root holds sockets such as exec/containerd/containerd-debug.sock)

The session fixture ``second_engine`` uses ``LAUNCHER_SECOND_ENGINE_ROOT`` as a persistent root when it is set (the
image copy, about 30 s, is then paid once: ``load_image`` skips an image whose ID is already there), otherwise a
fresh folder under /tmp that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import docker
import pytest

REQUIRE_DOCKER = os.environ.get("LAUNCHER_REQUIRE_DOCKER") == "1"
ROOT_ENV = "LAUNCHER_SECOND_ENGINE_ROOT"
# docker-py's default ("auto") asks the engine for its API version inside the constructor: probes use a fixed old
# version instead, so nothing connects before ping() and the client is always closed (see unix_socket_answers).
PROBE_API_VERSION = "1.24"

# The longest path dockerd 20.10 puts under its exec root is "containerd/containerd-debug.sock" (33 bytes); keep the
# exec root short enough that every socket below it stays well under the 108-byte sun_path limit.
_MAX_EXEC_ROOT = 60


# -- mounts ----------------------------------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    """Mount points in /proc/self/mountinfo escape space, tab, newline and backslash as octal (\\040)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below ``folder`` (from /proc/self/mountinfo), deepest first."""
    top = os.path.realpath(folder)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = _unescape(line.split()[4])
        if target == top or target.startswith(top.rstrip("/") + "/"):
            found.append(target)
    return sorted(set(found), key=lambda t: (t.count("/"), t), reverse=True)


def unmount_all_under(folder: Path) -> list[str]:
    """Unmount every mount point at or below ``folder``, deepest first (a plain umount, then ``umount -l`` for a busy
    one). Only mount points under ``folder`` are touched. Returns what is still mounted (should be nothing)."""
    for _ in range(3):  # a lazy unmount of a parent can reveal nothing new, but stacked mounts need another pass
        targets = mounts_under(folder)
        if not targets:
            break
        for target in targets:
            done = subprocess.run(["umount", target], capture_output=True, timeout=60)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", target], capture_output=True, timeout=60)
    return mounts_under(folder)


def remove_tree(folder: Path) -> None:
    """``rm -rf folder``, refusing to run while anything is mounted at or below it (deleting through a mount point
    would delete the mounted files), and refusing to descend into another filesystem."""
    if not folder.exists() and not folder.is_symlink():
        return
    left = mounts_under(folder)
    if left:
        raise RuntimeError(f"refusing to remove {folder}: still mounted below it: {left}")
    dev = folder.lstat().st_dev
    for dirpath, dirnames, _ in os.walk(folder):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not os.path.islink(path) and st.st_dev != dev:
                raise RuntimeError(f"refusing to remove {folder}: {path} is on another filesystem")
    shutil.rmtree(folder)


# -- processes -------------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found through /proc/*/stat's parent field)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def unix_socket_answers(path: str | Path) -> bool:
    """True when something accepts connections on the UNIX socket ``path``. Checked with a plain socket that is always
    closed: docker-py's UNIX connection leaks its socket when connect() fails (an unraisable ResourceWarning, an error
    under this project's filterwarnings)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def machine_socket() -> str | None:
    """The machine engine's UNIX socket path (DOCKER_HOST or the default), None for a TCP or ssh DOCKER_HOST."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return host.removeprefix("unix://") if host.startswith("unix://") else None


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pids_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (our exec root: our dockerd's containerd and shims)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and text in _cmdline(int(entry)) and _alive(int(entry)):
            found.append(int(entry))
    return found


# -- the engine ------------------------------------------------------------------------------------------------------


class SecondEngineError(RuntimeError):
    pass


class SecondEngine:
    """A private dockerd under ``root``; a context manager (``with SecondEngine(root) as engine:``)."""

    def __init__(self, root: Path, *, keep_data: bool = False, ready_timeout: float = 60.0) -> None:
        self.root = Path(os.path.realpath(root))
        self.keep_data = keep_data
        self.ready_timeout = ready_timeout
        self.data_root = self.root / "data"
        self.log = self.root / "dockerd.log"
        self.pidfile = self.root / "docker.pid"
        self.config = self.root / "daemon.json"
        self._short: Path | None = None  # our own /tmp/nbl-e2-* folder, when root is too long
        if len(str(self.root / "exec")) <= _MAX_EXEC_ROOT:
            self.exec_root = self.root / "exec"
            self.socket = self.root / "docker.sock"
        else:
            self._short = Path(tempfile.mkdtemp(prefix="nbl-e2-", dir="/tmp"))
            self.exec_root = self._short / "exec"
            self.socket = self._short / "docker.sock"
        self.docker_host = f"unix://{self.socket}"
        self._popen: subprocess.Popen | None = None
        self._containerd_pid: int | None = None
        self._clients: list[docker.DockerClient] = []
        self._owns_root = False  # set once start() has checked no other dockerd uses root
        self._root_was_empty = False  # then root itself is removed (not only what we put in it)
        self.ready_seconds: float | None = None
        self.last_load_seconds: float | None = None

    # -- lifecycle

    def start(self) -> SecondEngine:
        if self._popen is not None:
            raise SecondEngineError("already started")
        try:
            for tool in ("dockerd", "docker", "fuse-overlayfs", "umount"):
                if not shutil.which(tool):
                    raise SecondEngineError(f"{tool} is not installed")
            started = self._launch()
            self._wait_ready(started)
        except BaseException:
            self.stop()  # touches root only if this start() claimed it; always removes our short /tmp folder
            raise
        self.ready_seconds = time.monotonic() - started
        self._containerd_pid = self._read_containerd_pid()
        return self

    def _launch(self) -> float:
        """Claim root (refusing one another dockerd uses) and start dockerd; returns the monotonic start time."""
        self._root_was_empty = not self.root.exists() or not any(self.root.iterdir())
        self.root.mkdir(parents=True, exist_ok=True)
        other = self._pidfile_owner()
        if other is not None:  # never touch a root another dockerd is using (stop() would unmount its layers)
            raise SecondEngineError(f"{self.root} is in use by dockerd {other} ({self.pidfile}); not starting")
        self._owns_root = True
        self.data_root.mkdir(mode=0o710, exist_ok=True)
        self.config.write_text("{}\n")
        if self.socket.is_socket():
            self.socket.unlink()  # a stale socket of a previous run (dockerd refuses to bind over it otherwise)
        argv = [
            "dockerd",
            "--config-file", str(self.config),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "-H", self.docker_host,
            "--pidfile", str(self.pidfile),
            "--bridge", "none",
            "--iptables=false",
            "--ip-masq=false",
            "--storage-driver", "fuse-overlayfs",
        ]  # fmt: skip
        started = time.monotonic()
        with open(self.log, "ab") as out:  # the child keeps its own copy of the descriptor
            out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            self._popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return started

    def _wait_ready(self, started: float) -> None:
        assert self._popen is not None
        deadline = started + self.ready_timeout
        last_error: Exception | None = None
        while True:
            if self._popen.poll() is not None:
                raise SecondEngineError(
                    f"dockerd exited with status {self._popen.returncode} before answering on {self.docker_host}; "
                    f"log {self.log}:\n{self.tail()}"
                )
            if unix_socket_answers(self.socket):
                try:
                    client = docker.DockerClient(base_url=self.docker_host, version=PROBE_API_VERSION, timeout=5)
                    try:
                        if client.ping():
                            return
                    finally:
                        client.close()
                except Exception as exc:  # not listening yet, or starting up
                    last_error = exc
            if time.monotonic() > deadline:
                raise SecondEngineError(
                    f"dockerd did not answer on {self.docker_host} within {self.ready_timeout} s "
                    f"(last error: {last_error}); log {self.log}:\n{self.tail()}"
                )
            time.sleep(0.02)

    def _pidfile_owner(self) -> int | None:
        """The PID in our pidfile if that process is alive and is a dockerd (a stale pidfile is ignored)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) and "dockerd" in _cmdline(pid) else None

    def _read_containerd_pid(self) -> int | None:
        try:
            pid = int((self.exec_root / "containerd" / "containerd.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if str(self.exec_root) in _cmdline(pid) else None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def client(self, timeout: int = 60) -> docker.DockerClient:
        """A docker-py client of this engine (closed by ``stop()``)."""
        client = docker.DockerClient(base_url=self.docker_host, timeout=timeout)
        self._clients.append(client)
        return client

    def env(self) -> dict[str, str]:
        """The environment for a ``docker`` CLI call aimed at this engine."""
        env = {
            k: v for k, v in os.environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")
        }
        env["DOCKER_HOST"] = self.docker_host
        return env

    def memory(self) -> dict[str, int]:
        """RSS in KiB of our dockerd and of the containerd it manages."""
        out = {"dockerd_rss_kib": rss_kib(self.pid) if self.pid else 0}
        if self._containerd_pid:
            out["containerd_rss_kib"] = rss_kib(self._containerd_pid)
        return out

    def load_image(self, tag: str) -> bool:
        """Copy ``tag`` from the machine's engine (``docker save | DOCKER_HOST=... docker load``). Returns False when
        an image with the same ID is already here (nothing copied), True after a copy."""
        machine = docker.from_env(timeout=60)
        try:
            image_id = machine.images.get(tag).id
        finally:
            machine.close()
        client = self.client()
        try:
            old_id = client.images.get(tag).id
        except docker.errors.ImageNotFound:
            old_id = None
        if old_id == image_id:
            self.last_load_seconds = 0.0
            return False
        started = time.monotonic()
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert save.stdout is not None
        try:
            load = subprocess.run(
                ["docker", "load", "-q"], stdin=save.stdout, capture_output=True, env=self.env(), timeout=900
            )
        finally:
            save.stdout.close()  # so save gets SIGPIPE if load died
            save_err = save.stderr.read() if save.stderr else b""
            if save.stderr:
                save.stderr.close()
            save.wait(60)
        if save.returncode != 0 or load.returncode != 0:
            raise SecondEngineError(
                f"copying {tag} failed: docker save status {save.returncode}: {save_err.decode(errors='replace')}; "
                f"docker load status {load.returncode}: {load.stderr.decode(errors='replace')}"
            )
        self.last_load_seconds = time.monotonic() - started
        new_id = client.images.get(tag).id
        if new_id != image_id:
            raise SecondEngineError(f"{tag} loaded as {new_id}, expected {image_id}")
        if old_id is not None:  # the previous copy is now untagged: drop it unless something still uses it
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(old_id)
        return True

    def remove_containers(self) -> None:
        """Remove every container of this engine (it is private to us: all of them are ours)."""
        client = docker.DockerClient(base_url=self.docker_host, timeout=60)
        try:
            for container in client.containers.list(all=True):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True, v=True)
        finally:
            client.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Remove our containers, end our dockerd by its PID (SIGTERM, wait, SIGKILL), unmount whatever is left under
        our folders, and delete them: ``root/data`` is kept with ``keep_data=True``; otherwise root goes too when it
        was empty or absent before start(), else only what we put in it. Safe to call twice."""
        problems = []
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.alive():
            try:
                self.remove_containers()
            except Exception as exc:
                problems.append(f"removing containers: {exc}")
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                problems.append(f"dockerd {self._popen.pid} ignored SIGTERM for {timeout} s: SIGKILL")
                self._popen.kill()
                self._popen.wait(10)
        # The containerd (and any shim) our dockerd started: normally gone with it; after a SIGKILL, end them by PID
        # (only processes whose command line names our own exec root).
        # Only when this object launched a dockerd: a start() refused because another dockerd uses root must not
        # touch that one's processes.
        leftovers = set(pids_mentioning(f"{self.exec_root}/")) if self._popen is not None else set()
        if (
            self._containerd_pid
            and _alive(self._containerd_pid)
            and str(self.exec_root) in _cmdline(self._containerd_pid)
        ):
            leftovers.add(self._containerd_pid)
        orphan_ids = []
        for pid in leftovers:
            problems.append(f"leftover process {pid}: {_cmdline(pid)[:200]}")
            argv = _cmdline(pid).split()
            if "-id" in argv[:-1]:  # a shim: its container would outlive it, so end the container's processes first
                orphan_ids.append(argv[argv.index("-id") + 1])
                for child in _descendants(pid):
                    _kill(child, signal.SIGKILL)
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in leftovers) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in leftovers:
            if _alive(pid):
                _kill(pid, signal.SIGKILL)
        for container_id in orphan_ids:  # their cgroups (cgroup v1: one folder per controller), once empty
            for folder in Path("/sys/fs/cgroup").glob(f"*/docker/{container_id}"):
                with contextlib.suppress(OSError):
                    folder.rmdir()
        # Mounts (fuse-overlayfs layers, netns files, container shm left behind), then the folders, never deleting
        # across a mount point (remove_tree refuses). The short folder is always ours; root only once start() found
        # no other dockerd using it.
        folders = ([self._short] if self._short else []) + ([self.root] if self._owns_root else [])
        for folder in folders:
            left = unmount_all_under(folder)
            if left:
                problems.append(f"still mounted under {folder}: {left}")
        # fuse-overlayfs daemons end when their layer is unmounted; end any that did not
        if self._owns_root and self._popen is not None:
            for pid in pids_mentioning(f"{self.data_root}/"):
                if pid != self.pid and _alive(pid):
                    problems.append(f"leftover process {pid}: {_cmdline(pid)[:200]}")
                    _kill(pid, signal.SIGKILL)
        try:
            if self._short:
                remove_tree(self._short)
            if self._owns_root and self.keep_data:
                remove_tree(self.root / "exec")
                for leftover in (self.root / "docker.sock", self.pidfile):
                    if leftover.is_socket() or leftover.is_file():
                        leftover.unlink()
            elif self._owns_root and self._root_was_empty:
                remove_tree(self.root)
            elif self._owns_root:  # a folder that held other things: remove only what we put there
                for name in ("data", "exec", "docker.sock", "docker.pid", "daemon.json", "dockerd.log"):
                    path = self.root / name
                    if path.is_dir() and not path.is_symlink():
                        remove_tree(path)
                    elif path.exists() or path.is_symlink():
                        path.unlink()
        except (OSError, RuntimeError) as exc:
            problems.append(f"removing folders: {exc}")
        if problems:
            raise SecondEngineError("; ".join(problems))

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> SecondEngine:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# -- the pytest fixture ----------------------------------------------------------------------------------------------


def _skip_or_fail(reason: str) -> None:
    if REQUIRE_DOCKER:
        pytest.fail(reason)
    pytest.skip(reason)


def machine_docker_or_skip() -> None:
    """Skip (or fail, with LAUNCHER_REQUIRE_DOCKER=1) unless the machine's engine answers and a second one can run."""
    path = machine_socket()
    if path is not None and not unix_socket_answers(path):
        _skip_or_fail(f"a second Docker engine needs the machine's Docker engine: nothing answers on {path}")
    try:
        machine = docker.from_env(version=PROBE_API_VERSION, timeout=30)  # a fixed version: no connection yet
        try:
            machine.ping()
        finally:
            machine.close()
    except Exception as exc:
        _skip_or_fail(f"a second Docker engine needs the machine's Docker engine: {exc}")
    missing = [tool for tool in ("dockerd", "docker", "fuse-overlayfs") if not shutil.which(tool)]
    if missing:
        _skip_or_fail(f"a second Docker engine needs {', '.join(missing)}")
    if os.geteuid() != 0:
        _skip_or_fail("a second Docker engine needs root (dockerd)")


@pytest.fixture(scope="session")
def second_engine() -> Iterator[SecondEngine]:
    """A second dockerd on this machine for the whole session. With LAUNCHER_SECOND_ENGINE_ROOT set, its data root is
    kept there across runs; otherwise everything lives in a fresh /tmp folder that is removed afterwards."""
    machine_docker_or_skip()
    persistent = os.environ.get(ROOT_ENV)
    if persistent:
        root, keep = Path(persistent), True
    else:
        root, keep = Path(tempfile.mkdtemp(prefix="nbl-e2-", dir="/tmp")), False
    engine = SecondEngine(root, keep_data=keep)
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()
