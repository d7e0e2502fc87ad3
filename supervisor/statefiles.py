"""Everything the stack needs on disk under state_dir, written before any container is touched.

state_dir/             0700
  http_secret          0600  REGISTRY_HTTP_SECRET, generated once
  probe_token          0600  lets the daemon's own probes past the failed-login limit
  tls/                 0700  local CA and generated server certificate
  nginx/               0750 root:nginx, mounted read-only at /etc/nginx/conf.d
    registry.conf      generated nginx server config
    server.crt, server.key (0600)
    htpasswd           0640 root:nginx, bcrypt hashes
  data/                registry blobs (unless registry.data_dir is set)
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

from supervisor import htpasswd, nginx_conf, tls
from supervisor.const import (
    NGINX_CERT_FILE,
    NGINX_CONF_FILE,
    NGINX_GID,
    NGINX_KEY_FILE,
    SERVICE_REGISTRY,
)
from supervisor.fsutil import atomic_write, ensure_dir
from supervisor.paths import layout
from supervisor.settings import Settings


@dataclass(frozen=True)
class Prepared:
    http_secret: str
    probe_token: str
    # True when nginx's files changed and a running nginx must reload them.
    nginx_files_changed: bool
    generated_ca: Path | None
    cert_not_after: dt.datetime
    users: htpasswd.Users


def load_tls(settings: Settings) -> tls.ServerPair:
    if settings.tls.cert:
        return tls.load_user_pair(Path(settings.tls.cert), Path(settings.tls.key))
    paths = layout(settings)
    ensure_dir(paths.tls, 0o700)
    return tls.ensure_generated(
        paths.tls,
        settings.proxy.server_name,
        valid_for=dt.timedelta(days=settings.tls.valid_days),
        renew_before=dt.timedelta(days=settings.tls.renew_before_days),
    )


def renewal_due_at(settings: Settings, prepared: Prepared) -> dt.datetime | None:
    """When the generated server certificate must be renewed (None for the user's own pair)."""
    if settings.tls.cert:
        return None
    return prepared.cert_not_after - dt.timedelta(days=settings.tls.renew_before_days)


def _generated_secret(path: Path) -> str:
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not value:
        value = secrets.token_urlsafe(32)
        atomic_write(path, value.encode(), mode=0o600)
    return value


def ensure_user_dir(settings: Settings) -> None:
    paths = layout(settings)
    ensure_dir(paths.state, 0o700)
    ensure_dir(paths.nginx, 0o750, gid=NGINX_GID)


def prepare(settings: Settings) -> Prepared:
    """Check the user's TLS pair, then write certs, config, secret and user file under state_dir."""
    if settings.tls.cert:
        # The user's pair is checked before anything is written.
        pair = load_tls(settings)
    paths = layout(settings)
    ensure_user_dir(settings)
    if not settings.tls.cert:
        pair = load_tls(settings)
    if settings.registry.storage.driver != "filesystem":
        pass  # blobs live in the bucket
    elif not settings.registry.data_dir:
        ensure_dir(settings.data_path, 0o700)
    else:
        settings.data_path.mkdir(parents=True, exist_ok=True)
    probe_token = _generated_secret(paths.probe_token)
    conf = nginx_conf.render(
        nginx_conf.ProxyConfig(
            server_name=settings.proxy.server_name,
            realm=settings.auth.realm,
            probe_token=probe_token,
            upstream_tasks=f"tasks.{settings.name}-{SERVICE_REGISTRY}" if settings.mode == "swarm" else "",
        )
    )
    changed = atomic_write(paths.nginx / NGINX_CONF_FILE, conf.encode(), mode=0o640, gid=NGINX_GID)
    changed |= atomic_write(paths.nginx / NGINX_CERT_FILE, pair.cert_pem, mode=0o644)
    changed |= atomic_write(paths.nginx / NGINX_KEY_FILE, pair.key_pem, mode=0o600)
    users = htpasswd.ensure_file(paths.htpasswd, gid=NGINX_GID)
    return Prepared(
        http_secret=_generated_secret(paths.http_secret),
        probe_token=probe_token,
        nginx_files_changed=changed,
        generated_ca=None if settings.tls.cert else paths.ca_cert,
        cert_not_after=pair.not_after,
        users=users,
    )
