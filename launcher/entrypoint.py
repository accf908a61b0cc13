"""Render and run the per-host entry point: nginx plus its authorizer (``launcher.adapters.authorizer``).

python -m launcher.entrypoint render --prefix DIR     write DIR/nginx.conf
python -m launcher.entrypoint run --prefix DIR        render, start nginx, serve the authorizer; both
                                                      stop when either does (SIGTERM stops both)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

from launcher.settings import REPO_ROOT, Settings

TEMPLATE = REPO_ROOT / "docker" / "nginx" / "entrypoint.conf.template"
# Debian's libnginx-mod-http-brotli-static: serves a file's .br beside it to browsers that accept brotli.
BROTLI_MODULE = Path("/usr/lib/nginx/modules/ngx_http_brotli_static_module.so")

# How nginx talks to the authorizer: HTTP/1.1 keepalive over its UNIX socket, the session id
# captured from the Host, and the browser's Host passed through.
_AUTHORIZER_PROXY = """proxy_pass http://nbl_authorizer;
proxy_http_version 1.1;
proxy_set_header Connection "";
proxy_set_header Host $http_host;
proxy_set_header X-Nbl-Sid $sid;
"""


_HSTS = 'add_header Strict-Transport-Security "max-age=31536000" always;'


# Every request to a session origin: ask the authorizer, then proxy to the session's socket with the
# secret added and only Jupyter's XSRF cookie passed on.
_NOTEBOOK_PROXY = """auth_request /_nbl_auth;
auth_request_set $nbl_token $upstream_http_x_nbl_token;
auth_request_set $nbl_reason $upstream_http_x_nbl_reason;
error_page 401 = @open;
error_page 403 = @refused;
proxy_pass http://unix:{sessions}/$sid/sock/jupyter.sock;
# Jupyter checks Host (and Origin against Host for WebSockets): pass it through, port included.
proxy_set_header Host $http_host;
proxy_set_header X-Nbl-Auth $nbl_token;
proxy_set_header Authorization "";
proxy_set_header Cookie $nbl_upstream_cookie;
proxy_set_header X-Real-IP $remote_addr;
proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
proxy_set_header X-Forwarded-Proto $scheme;
proxy_set_header Upgrade $http_upgrade;
proxy_set_header Connection $connection_upgrade;
proxy_buffering off;
proxy_read_timeout 1h;
proxy_send_timeout 1h;
proxy_intercept_errors off;
error_page 502 504 = @not_running;
"""

# JupyterLab's pages: the idle warning's script added before </head> (docker/nginx/idle.js, served by the
# authorizer under a URL carrying its hash, so browsers may keep it). Jupyter is asked for an uncompressed
# answer, which sub_filter needs; only HTML is rewritten (sub_filter_types' default).
_IDLE_WARNING = """proxy_set_header Accept-Encoding "";
sub_filter_once on;
sub_filter_last_modified off;
sub_filter '</head>' '<script src="/_nbl/idle.js?v={version}" defer></script></head>';
"""

# On every answer of a session origin (a location with add_header of its own must include it again).
_SECURITY_HEADERS = """add_header X-Content-Type-Options nosniff always;
add_header Referrer-Policy no-referrer always;
add_header Content-Security-Policy "frame-ancestors 'self'" always;
"""


def authorizer_socket(prefix: Path) -> Path:
    return prefix / "auth" / "authorizer.sock"


def render(settings: Settings, prefix: Path, *, run_as_root: bool | None = None) -> str:
    """The nginx configuration text for this host (pure but for reading the template)."""
    if run_as_root is None:
        run_as_root = os.geteuid() == 0
    # As root, nginx's workers drop to a user of the group that owns each session's socket.
    user_directive = f"user nobody {_group_name(settings.proxy_gid)};" if run_as_root else ""
    text = TEMPLATE.read_text()
    brotli = BROTLI_MODULE.is_file()  # JupyterLab's assets precompressed (workers/labstatic.py); else gzip only
    for name, value in {
        "USER_DIRECTIVE": user_directive,
        "LOAD_MODULES": f"load_module {BROTLI_MODULE};" if brotli else "",
        "BROTLI_STATIC": "brotli_static on;" if brotli else "",
        "PREFIX": str(prefix),
        "LISTEN": settings.entrypoint_listen,
        "AUTHORIZER_SOCKET": str(authorizer_socket(prefix)),
        "DOMAIN": settings.notebook_domain,
        "LAB_STATIC": str(settings.lab_static_dir.resolve()),
        "DOMAIN_RE": re.escape(settings.notebook_domain),
        "CONSOLE_URL": settings.console_url.replace("'", "%27").replace('"', "%22"),
        "SSL": " ssl" if settings.entrypoint_tls_cert else "",
        "TLS": _tls_directives(settings),
    }.items():
        text = text.replace("{{" + name + "}}", value)
    return text


def _tls_directives(settings: Settings) -> str:
    """TLS for the notebook domain and its wildcard (one certificate), when the entry point terminates it."""
    if settings.entrypoint_tls_cert is None or settings.entrypoint_tls_key is None:
        return ""
    return (
        f"    ssl_certificate {settings.entrypoint_tls_cert.resolve()};\n"
        f"    ssl_certificate_key {settings.entrypoint_tls_key.resolve()};\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        "    ssl_session_cache shared:nbl_tls:1m;\n"
    )


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        raise SystemExit(f"no group with gid {gid} on this host: set LAUNCHER_PROXY_GID") from None


def write_config(settings: Settings, prefix: Path) -> Path:
    prefix = prefix.resolve()
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    auth = authorizer_socket(prefix).parent
    auth.mkdir(exist_ok=True)
    if os.geteuid() == 0:  # only root and the entry point's workers reach the authorizer
        os.chown(auth, 0, settings.proxy_gid)
    os.chmod(auth, 0o750)
    (prefix / "authorizer_proxy.conf").write_text(_AUTHORIZER_PROXY)
    sessions = str(settings.sessions_dir.resolve())
    (prefix / "notebook_proxy.conf").write_text(_NOTEBOOK_PROXY.replace("{sessions}", sessions))
    from launcher.adapters.authorizer import idle_js_version

    (prefix / "idle_warning.conf").write_text(_IDLE_WARNING.replace("{version}", idle_js_version()))
    headers = _SECURITY_HEADERS + (_HSTS + "\n" if settings.entrypoint_tls_cert else "")
    (prefix / "security_headers.conf").write_text(headers)
    conf = prefix / "nginx.conf"
    conf.write_text(render(settings, prefix))
    return conf


def run(settings: Settings, prefix: Path) -> None:
    """nginx as a child, the authorizer in this process; when either ends, both end."""
    from launcher.adapters import authorizer

    conf = write_config(settings, prefix)
    sock = authorizer_socket(prefix.resolve())
    sock.unlink(missing_ok=True)
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    nginx = subprocess.Popen([nginx_bin, "-c", str(conf), "-p", str(prefix.resolve())])

    def watch() -> None:
        nginx.wait()
        os.kill(os.getpid(), signal.SIGTERM)  # nginx died: take the authorizer down too

    threading.Thread(target=watch, daemon=True).start()
    try:
        authorizer.serve(settings, str(sock))
    finally:
        if nginx.poll() is None:
            nginx.terminate()
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="launcher-entrypoint", description=__doc__)
    parser.add_argument("action", choices=["render", "run"])
    parser.add_argument("--prefix", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = Settings()
    if args.action == "render":
        print(write_config(settings, args.prefix))
        return
    run(settings, args.prefix)


if __name__ == "__main__":
    main()
