"""The htpasswd file nginx checks basic auth against: bcrypt hashes, atomic updates.

nginx re-reads the file on every request, so a change takes effect without a reload.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bcrypt

from supervisor.errors import UserError
from supervisor.fsutil import atomic_write, locked

MAX_NAME_LENGTH = 64
# `htpasswd -B`'s default cost. nginx checks the hash on every authenticated request, inside its
# event loop: at bcrypt's own default (10) that is ~70 ms of a blocked worker per request, and a
# burst of 50 new clients froze nginx long enough to fail its liveness probe (bench/). Online
# guessing is held back by the failed-login limit instead (nginx_conf.py).
BCRYPT_ROUNDS = 5
# bcrypt ignores everything past 72 bytes: refuse instead of silently truncating.
MAX_PASSWORD_BYTES = 72


@dataclass(frozen=True)
class Malformed:
    line_number: int
    reason: str


@dataclass
class Users:
    hashes: dict[str, str]
    malformed: list[Malformed]
    # Malformed lines are kept verbatim so a rewrite loses nothing a human typed.
    raw_lines: list[str]


def check_name(name: str) -> None:
    if not name:
        raise UserError("user name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise UserError(f"user name {name[:16]!r}... is longer than {MAX_NAME_LENGTH} characters")
    if ":" in name or any(not c.isprintable() or c.isspace() for c in name):
        raise UserError(f"user name {name!r} contains ':', whitespace or control characters")


def check_password(name: str, password: str) -> None:
    if not password:
        raise UserError(f"user {name!r}: empty password refused")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise UserError(f"user {name!r}: password longer than {MAX_PASSWORD_BYTES} bytes")
    if "\n" in password or "\r" in password:
        raise UserError(f"user {name!r}: password contains a line break")


def hash_password(password: str) -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
    # $2y$ is what `htpasswd -B` writes; the same algorithm as bcrypt's $2b$.
    return "$2y$" + hashed.removeprefix("$2b$")


def parse(text: str) -> Users:
    users = Users(hashes={}, malformed=[], raw_lines=[])
    for number, line in enumerate(text.splitlines(), start=1):
        users.raw_lines.append(line)
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not name or not hashed:
            users.malformed.append(Malformed(number, "expected NAME:HASH"))
        elif name in users.hashes:
            users.malformed.append(Malformed(number, f"duplicate user {name!r}"))
        else:
            users.hashes[name] = hashed
    return users


def load(path: Path) -> Users:
    try:
        return parse(path.read_text())
    except FileNotFoundError:
        return Users(hashes={}, malformed=[], raw_lines=[])


def _render(users: Users, drop: str | None = None, add: tuple[str, str] | None = None) -> bytes:
    lines = []
    for line in users.raw_lines:
        name, sep, _ = line.partition(":")
        if sep and name in (drop, add[0] if add else None):
            continue
        lines.append(line)
    if add:
        lines.append(f"{add[0]}:{add[1]}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def add_user(path: Path, name: str, password: str, gid: int | None) -> bool:
    """Add or replace a user. Returns True if the user existed before."""
    check_name(name)
    check_password(name, password)
    hashed = hash_password(password)
    with locked(_lock_path(path)):
        users = load(path)
        existed = name in users.hashes
        atomic_write(path, _render(users, add=(name, hashed)), mode=0o640, gid=gid)
    return existed


def remove_user(path: Path, name: str, gid: int | None) -> None:
    with locked(_lock_path(path)):
        users = load(path)
        if name not in users.hashes:
            raise UserError(f"user {name!r} does not exist in {path}")
        atomic_write(path, _render(users, drop=name), mode=0o640, gid=gid)


def ensure_file(path: Path, gid: int | None) -> Users:
    """Create an empty user file if there is none; fix its mode; return what it holds."""
    with locked(_lock_path(path)):
        users = load(path)
        data = path.read_bytes() if path.exists() else b""
        atomic_write(path, data, mode=0o640, gid=gid)
    return users
