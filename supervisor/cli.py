"""Command line: run, down, status, check-config, user add/remove/list."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from supervisor import htpasswd, logs, paths, statefiles
from supervisor.const import CONFIG_ENV, DEFAULT_CONFIG_PATH, EXIT_OK, NGINX_GID
from supervisor.engine import Engine, connect
from supervisor.errors import UserError
from supervisor.settings import Settings, effective_settings, load_settings
from supervisor.status import collect_status, collect_swarm_status, format_status_table, format_swarm_status
from supervisor.swarm import Swarm
from supervisor.swarm_specs import network_name

log = structlog.get_logger()


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(Path(args.config))


def _engine(settings: Settings) -> Engine:
    return Engine(connect(settings.docker.host), settings.name)


def _swarm(settings: Settings) -> Swarm:
    swarm = Swarm(connect(settings.docker.host), settings.name)
    swarm.require_manager()
    return swarm


def cmd_run(args: argparse.Namespace) -> int:
    from supervisor.daemon import run_daemon

    return run_daemon(Path(args.config))


def cmd_down(args: argparse.Namespace) -> int:
    from supervisor.stack import down

    settings = _settings(args)
    if settings.mode == "swarm":
        swarm = _swarm(settings)
        services = swarm.remove_all(network_name(settings.name))
        print(
            f"removed {len(services)} swarm service(s) with their configs and secrets; bucket, certificates and users kept"
        )
        return EXIT_OK
    removed = down(_engine(settings), settings.name)
    print(f"removed {len(removed)} container(s); data, certificates and users kept")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.mode == "swarm":
        report = collect_swarm_status(settings, _swarm(settings))
        text = format_swarm_status(report)
    else:
        report = collect_status(settings, _engine(settings))
        text = format_status_table(report)
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else text)
    return EXIT_OK


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    for key, value in _flatten(effective_settings(settings)):
        print(f"{key} = {json.dumps(value)}")
    print(f"# {args.config}: OK", file=sys.stderr)
    return EXIT_OK


def _read_password(name: str, from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"Password for {name}: ")
    second = getpass.getpass("Again: ")
    if first != second:
        raise UserError(f"user {name!r}: the two passwords differ")
    return first


def cmd_user_add(args: argparse.Namespace) -> int:
    settings = _settings(args)
    htpasswd.check_name(args.name)
    password = _read_password(args.name, args.password_stdin)
    path = paths.layout(settings).htpasswd
    statefiles.ensure_user_dir(settings)
    existed = htpasswd.add_user(path, args.name, password, gid=NGINX_GID)
    print(f"user {args.name!r} {'updated' if existed else 'added'} in {path}")
    _swarm_note(settings)
    return EXIT_OK


def cmd_user_remove(args: argparse.Namespace) -> int:
    settings = _settings(args)
    path = paths.layout(settings).htpasswd
    htpasswd.remove_user(path, args.name, gid=NGINX_GID)
    print(f"user {args.name!r} removed from {path}")
    _swarm_note(settings)
    return EXIT_OK


def _swarm_note(settings: Settings) -> None:
    if settings.mode == "swarm":
        print(
            "swarm mode: the daemon rolls the change out to the proxies within 10 s (or: systemctl reload regsupervisor)"
        )


def cmd_user_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    users = htpasswd.load(paths.layout(settings).htpasswd)
    for name in users.hashes:
        print(name)
    for bad in users.malformed:
        print(f"# line {bad.line_number}: {bad.reason}", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH,
        help=f"config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})",
    )
    common.add_argument(
        "--log-format",
        choices=["auto", "console", "json", "journal"],
        default="auto",
        help="auto: journal priority prefixes under systemd, console otherwise",
    )
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")

    parser = argparse.ArgumentParser(
        prog="regsupervisor", description="Run a private Docker registry and keep it alive."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_, description=help_)
        sub.set_defaults(handler=handler)
        return sub

    add("run", cmd_run, "bring the stack up and supervise it until SIGTERM/SIGINT")
    add("down", cmd_down, "stop and remove the containers and network; keep data, certs, users")
    add("status", cmd_status, "show each service's container and state").add_argument(
        "--json", action="store_true", help="machine-readable output"
    )
    add("check-config", cmd_check_config, "validate the config and print the effective settings")

    user = commands.add_parser("user", help="manage registry users")
    user_commands = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    user_add = user_commands.add_parser("add", parents=[common], help="add a user or change a password")
    user_add.add_argument("name")
    user_add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    user_add.set_defaults(handler=cmd_user_add)
    user_remove = user_commands.add_parser("remove", parents=[common], help="remove a user")
    user_remove.add_argument("name")
    user_remove.set_defaults(handler=cmd_user_remove)
    user_commands.add_parser("list", parents=[common], help="list users").set_defaults(handler=cmd_user_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_format, args.log_level)
    try:
        code: int = args.handler(args)
    except UserError as exc:
        if args.command == "run":
            # The daemon's errors go to its log (the journal under systemd), one event each.
            log.error(str(exc), error=type(exc).__name__)
        else:
            print(f"regsupervisor: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:
        if args.command != "run":
            raise
        # A bug in the daemon: one err event with the traceback (a bare traceback on stderr would
        # reach the journal at info priority), and status 1, which systemd restarts.
        log.exception("daemon crashed")
        return 1
    return code
