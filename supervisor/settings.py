"""config.toml + REGSUPERVISOR_* environment → validated, typed settings.

Every value that ends up inside the generated nginx config or a container name is checked here, so
nothing downstream has to escape anything.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from supervisor.const import ENV_PREFIX
from supervisor.errors import ConfigError

ENV_NESTED_DELIMITER = "__"

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")
# A Docker image reference: [registry[:port]/]repo[:tag][@digest]; no spaces, quotes or shell/nginx meta.
_IMAGE_RE = re.compile(r"[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?")
_IMAGE_HOST_PORT_RE = re.compile(
    r"[a-z0-9][a-z0-9.-]*:[0-9]+/[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
)
_SERVER_NAME_RE = re.compile(
    r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# Printable ASCII without the characters that end or escape a quoted nginx string or start a variable.
_REALM_RE = re.compile(r"[A-Za-z0-9 ._,:/()@+=-]{1,100}")


@dataclass(frozen=True)
class HostPort:
    """A host address and port as Docker's port bindings want them."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback


def parse_host_port(value: str) -> HostPort:
    """Parse "ADDR:PORT", "[V6]:PORT" or "PORT" (all addresses)."""
    text = value.strip()
    if text.isdigit():
        host, port_text = "0.0.0.0", text
    elif text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{value!r} is not [ADDRESS]:PORT")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r} is not ADDRESS:PORT")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} in {value!r} is not an IP address") from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} in {value!r} is not 1-65535")
    return HostPort(str(address), int(port_text))


def _matches(pattern: re.Pattern[str], what: str, optional: bool = False) -> AfterValidator:
    def check(value: str) -> str:
        if not (optional and not value) and not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid {what}")
        return value

    return AfterValidator(check)


def _check_image(value: str) -> str:
    if not (_IMAGE_RE.fullmatch(value) or _IMAGE_HOST_PORT_RE.fullmatch(value)):
        raise ValueError(f"{value!r} is not a valid image reference")
    return value


def _check_optional_host_port(value: str) -> str:
    if value:
        parse_host_port(value)
    return value


def _check_optional_abs_path(value: str) -> str:
    if value and not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path")
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise ValueError("path contains control characters")
    return value


def _check_memory(value: str) -> str:
    if value and not re.fullmatch(r"[1-9][0-9]*[kmg]?", value):
        raise ValueError(f"{value!r} is not a size like 512m or 2g")
    return value


ImageRef = Annotated[str, AfterValidator(_check_image)]
MemoryLimit = Annotated[str, AfterValidator(_check_memory)]
OptionalHostPort = Annotated[str, AfterValidator(_check_optional_host_port)]
OptionalAbsPath = Annotated[str, AfterValidator(_check_optional_abs_path)]
AbsPath = Annotated[str, Field(min_length=1), AfterValidator(_check_optional_abs_path)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DockerSettings(Section):
    host: str = ""
    pull: Literal["always", "missing", "never"] = "missing"


# An S3 bucket name (path style keeps dotted names working).
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SWARM_OBJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _check_endpoint(value: str) -> str:
    if value and not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?", value):
        raise ValueError(f"{value!r} is not an endpoint like https://s3.example.net or http://minio:9000")
    return value


class StorageSettings(Section):
    """Where the registry keeps blobs: a local directory, or an S3-compatible bucket every replica
    shares (needed in swarm mode)."""

    driver: Literal["filesystem", "s3"] = "filesystem"
    bucket: Annotated[str, _matches(_BUCKET_RE, "bucket name", optional=True)] = ""
    # Empty: AWS itself; otherwise the S3-compatible service's URL (http:// turns TLS off).
    endpoint: Annotated[str, AfterValidator(_check_endpoint)] = ""
    region: Annotated[str, _matches(re.compile(r"[a-z0-9-]{1,32}"), "region")] = "us-east-1"
    path_style: bool = False
    root_directory: Annotated[str, _matches(re.compile(r"/[A-Za-z0-9_./-]*"), "path", optional=True)] = ""
    # Credentials, never inline: files on the daemon's host, or an existing swarm secret in the
    # AWS shared-credentials format. Neither: the nodes' own (instance role, environment).
    access_key_file: OptionalAbsPath = ""
    secret_key_file: OptionalAbsPath = ""
    credentials_secret: Annotated[str, _matches(_SWARM_OBJECT_RE, "swarm secret name", optional=True)] = ""

    @model_validator(mode="after")
    def _complete(self) -> StorageSettings:
        if self.driver == "s3" and not self.bucket:
            raise ValueError('bucket: required with driver = "s3"')
        if bool(self.access_key_file) != bool(self.secret_key_file):
            raise ValueError("access_key_file and secret_key_file: set both or neither")
        if self.access_key_file and self.credentials_secret:
            raise ValueError("credentials_secret: use it or the key files, not both")
        return self


class RegistrySettings(Section):
    image: ImageRef = "registry:2"
    data_dir: OptionalAbsPath = ""
    publish: OptionalHostPort = ""
    memory: MemoryLimit = ""
    # Swarm mode: how many registry tasks share the storage.
    replicas: int = Field(2, ge=1, le=64)
    storage: StorageSettings = StorageSettings()


class ProxySettings(Section):
    image: ImageRef = "nginx:1.28"
    listen: Annotated[str, Field(min_length=1), AfterValidator(_check_optional_host_port)] = "0.0.0.0:5443"
    server_name: Annotated[str, Field(max_length=253), _matches(_SERVER_NAME_RE, "host name")] = "localhost"
    memory: MemoryLimit = ""


class TLSSettings(Section):
    cert: OptionalAbsPath = ""
    key: OptionalAbsPath = ""
    # Generated server certificates only: lifetime, and renewal (in place, nginx reloads) when
    # fewer than renew_before_days remain.
    valid_days: float = Field(default=90.0, gt=0, le=90)
    renew_before_days: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _both_or_neither(self) -> TLSSettings:
        if bool(self.cert) != bool(self.key):
            raise ValueError("set both tls.cert and tls.key, or neither to generate them")
        if self.renew_before_days >= self.valid_days:
            raise ValueError("tls.renew_before_days must be less than tls.valid_days")
        return self


class AuthSettings(Section):
    realm: Annotated[str, _matches(_REALM_RE, "realm (letters, digits, space and ._,:/()@+=-)")] = "Registry"


class RespawnSettings(Section):
    # Upstart's `respawn limit COUNT INTERVAL`; 0 means unlimited.
    limit: int = Field(10, ge=0)
    interval: float = Field(5.0, ge=0)
    # Optional backoff between respawns (off by default: Upstart adds none).
    delay: float = Field(0.0, ge=0)
    max_delay: float = Field(60.0, ge=0)
    reset_after: float = Field(10.0, ge=0)


class HealthSettings(Section):
    interval: float = Field(2.0, gt=0)
    timeout: float = Field(1.0, gt=0)
    failures: int = Field(3, ge=1)
    start_period: float = Field(10.0, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    name: Annotated[str, _matches(_NAME_RE, "name (a-z, 0-9, _.-, at most 40)")] = "regsupervisor"
    # standalone: containers on this engine; swarm: services on the swarm this engine manages.
    mode: Literal["standalone", "swarm"] = "standalone"
    state_dir: AbsPath = "/var/lib/regsupervisor"
    stop_on_exit: bool = True
    docker: DockerSettings = DockerSettings()
    registry: RegistrySettings = RegistrySettings()
    proxy: ProxySettings = ProxySettings()
    tls: TLSSettings = TLSSettings()
    auth: AuthSettings = AuthSettings()
    respawn: RespawnSettings = RespawnSettings()
    health: HealthSettings = HealthSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file; the file's path comes from the subclass load_settings makes.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @model_validator(mode="after")
    def _mode_fits_storage(self) -> Settings:
        driver = self.registry.storage.driver
        if self.mode == "swarm" and driver != "s3":
            raise ValueError(
                'registry.storage.driver: swarm mode needs storage every replica shares: set driver = "s3"'
            )
        if self.mode == "standalone" and driver != "filesystem":
            raise ValueError(
                'registry.storage.driver: s3 storage is used in swarm mode only (mode = "swarm")'
            )
        if self.mode == "swarm" and not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", self.name):
            # Service names allow no dot; config names end "-registry-config-<digest>" within 64.
            raise ValueError(f"name: {self.name!r} in swarm mode: a-z, 0-9, _ and - only, at most 32")
        if self.mode == "swarm" and self.registry.publish:
            raise ValueError(
                "registry.publish: not available in swarm mode (the registry tasks are reached through nginx)"
            )
        return self

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def data_path(self) -> Path:
        return Path(self.registry.data_dir) if self.registry.data_dir else self.state_path / "data"

    @property
    def listen(self) -> HostPort:
        return parse_host_port(self.proxy.listen)

    @property
    def registry_publish(self) -> HostPort | None:
        return parse_host_port(self.registry.publish) if self.registry.publish else None


def _env_name(loc: tuple[int | str, ...]) -> str:
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(part) for part in loc).upper()


def _describe(error: ErrorDetails, path: Path) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(part) for part in loc) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    env = _env_name(loc)
    source = f"environment {env}" if loc and env in os.environ else str(path)
    return f"{source}: {key}: {message}"


def load_settings(path: Path) -> Settings:
    """Read and validate the config file (and environment overrides) or raise ConfigError."""
    try:
        with path.open("rb") as stream:
            tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (set --config or REGSUPERVISOR_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    bound = type(
        "Settings",
        (Settings,),
        {"model_config": SettingsConfigDict(**{**Settings.model_config, "toml_file": path})},
    )
    try:
        settings: Settings = bound()
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], path)) from None
    except ValueError as exc:  # pydantic-settings' own parse errors (e.g. bad JSON in an env var)
        raise ConfigError(f"{path}: {exc}".splitlines()[0]) from None
    return settings


def reload_settings(path: Path, current: Settings) -> Settings:
    """The settings a SIGHUP switches to; what names the running stack needs a restart."""
    new = load_settings(path)
    fixed = ("name", "mode", "state_dir")
    if (
        any(getattr(new, key) != getattr(current, key) for key in fixed)
        or new.docker.host != current.docker.host
    ):
        raise ConfigError("name, mode, docker.host and state_dir cannot change on reload: restart")
    return new


_SECRET_WORDS = ("secret", "password", "access_key", "token")


def _mask(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _mask(v, k) for k, v in value.items()}
    if value and any(word in key for word in _SECRET_WORDS):
        return "********"
    return value


def effective_settings(settings: Settings) -> dict[str, Any]:
    """The settings as a plain dict for display, with secret values masked (file paths are shown)."""
    masked: dict[str, Any] = _mask(settings.model_dump(mode="json"))
    return masked
