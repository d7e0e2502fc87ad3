"""Where the daemon keeps its files under state_dir (pure: names only, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from supervisor.const import CA_CERT_FILE, HTPASSWD_FILE
from supervisor.settings import Settings


@dataclass(frozen=True)
class Layout:
    state: Path

    @property
    def http_secret(self) -> Path:
        return self.state / "http_secret"

    @property
    def probe_token(self) -> Path:
        return self.state / "probe_token"

    @property
    def tls(self) -> Path:
        return self.state / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls / CA_CERT_FILE

    @property
    def nginx(self) -> Path:
        return self.state / "nginx"

    @property
    def htpasswd(self) -> Path:
        return self.nginx / HTPASSWD_FILE

    @property
    def status(self) -> Path:
        return self.state / "status.json"


def layout(settings: Settings) -> Layout:
    return Layout(settings.state_path)
