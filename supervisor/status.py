"""`regsupervisor status`: what the engine says, plus what the running daemon says."""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

from supervisor import paths
from supervisor.const import SERVICE_ORDER
from supervisor.engine import Engine
from supervisor.settings import Settings
from supervisor.swarm import Swarm, replica_counts


def _daemon_report(settings: Settings) -> dict[str, Any] | None:
    try:
        report: dict[str, Any] = json.loads(paths.layout(settings).status.read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(int(report["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError):
        report["daemon_running"] = False
    except PermissionError:
        report["daemon_running"] = True
    else:
        report["daemon_running"] = True
    return report


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def collect_status(settings: Settings, engine: Engine) -> dict[str, Any]:
    containers = {c.service: c for c in engine.containers()}
    daemon = _daemon_report(settings)
    services: dict[str, Any] = {}
    for service in SERVICE_ORDER:
        c = containers.get(service)
        entry: dict[str, Any] = {
            "container": c.name if c else None,
            "id": c.short_id if c else None,
            "state": c.status if c else "missing",
            "health": c.health or None if c else None,
            "image": c.image if c else None,
            "ports": c.ports if c else [],
            "started_at": c.started_at if c and c.running else None,
        }
        supervised = (daemon or {}).get("services", {}).get(service, {})
        running = bool(daemon and daemon.get("daemon_running"))
        entry["supervision"] = supervised.get("supervision") if running else None
        entry["respawns_in_window"] = supervised.get("respawns_in_window", 0) if running else 0
        entry["last_exit_code"] = supervised.get("last_exit_code")
        entry["last_problem"] = supervised.get("last_problem") or None
        entry["last_problem_at"] = _iso(supervised.get("last_problem_at"))
        services[service] = entry
    return {
        "project": settings.name,
        "daemon": {
            "running": bool(daemon and daemon.get("daemon_running")),
            "pid": daemon.get("pid") if daemon else None,
        },
        "services": services,
    }


def format_status_table(report: dict[str, Any]) -> str:
    header = (
        "SERVICE",
        "CONTAINER",
        "STATE",
        "SUPERVISION",
        "RESPAWNS",
        "IMAGE",
        "PORTS",
        "STARTED",
    )
    rows = [header]
    for service, e in report["services"].items():
        rows.append(
            (
                service,
                e["container"] or "-",
                e["state"] + (f" ({e['health']})" if e["health"] else ""),
                e["supervision"] or "-",
                str(e["respawns_in_window"]),
                e["image"] or "-",
                ",".join(e["ports"]) or "-",
                (e["started_at"] or "-")[:19],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    daemon = report["daemon"]
    lines.append(f"daemon: {'running, pid ' + str(daemon['pid']) if daemon['running'] else 'not running'}")
    for service, e in report["services"].items():
        if e["last_problem"]:
            lines.append(f"{service}: last problem at {e['last_problem_at']}: {e['last_problem']}")
    return "\n".join(lines)


def collect_swarm_status(settings: Settings, swarm: Swarm) -> dict[str, Any]:
    services = swarm.services()
    counts = replica_counts(services, swarm.tasks(), swarm.node_names())
    daemon = _daemon_report(settings)
    supervised = (daemon or {}).get("services", {}) if daemon and daemon.get("daemon_running") else {}
    return {
        "project": settings.name,
        "mode": "swarm",
        "daemon": {
            "running": bool(daemon and daemon.get("daemon_running")),
            "pid": daemon.get("pid") if daemon else None,
        },
        "services": {
            name: {
                **counts.get(
                    name, {"swarm_service": None, "desired": 0, "running": 0, "nodes": {}, "update": None}
                ),
                "failures_in_window": supervised.get(name, {}).get("failures_in_window", 0),
                "last_problem": supervised.get(name, {}).get("last_problem") or None,
                "last_problem_at": _iso(supervised.get(name, {}).get("last_problem_at")),
            }
            for name in SERVICE_ORDER
        },
    }


def format_swarm_status(report: dict[str, Any]) -> str:
    header = ("SERVICE", "SWARM SERVICE", "RUNNING", "UPDATE", "NODES")
    rows = [header]
    for service, e in report["services"].items():
        nodes = ",".join(f"{node}:{count}" for node, count in e["nodes"].items())
        rows.append(
            (
                service,
                e["swarm_service"] or "-",
                f"{e['running']}/{e['desired']}",
                e["update"] or "-",
                nodes or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    daemon = report["daemon"]
    lines.append(
        f"daemon: {'running, pid ' + str(daemon['pid']) if daemon['running'] else 'not running'} (swarm mode)"
    )
    for service, e in report["services"].items():
        if e["last_problem"]:
            lines.append(f"{service}: last problem at {e['last_problem_at']}: {e['last_problem']}")
    return "\n".join(lines)
