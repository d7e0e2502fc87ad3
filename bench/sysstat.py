"""CPU and memory accounting from /proc and the containers' cgroups (v1 or v2)."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def rss_bytes(pid: int) -> int:
    """Resident set size of a process and its descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def cpu_seconds(pid: int) -> float:
    """User + system time of a process (all threads) and its live descendants."""
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def machine_busy_seconds() -> float:
    """CPU-seconds all cores spent not idle since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def _cgroup_dir(container_id: str, controller: str) -> Path | None:
    for candidate in (
        Path(f"/sys/fs/cgroup/{controller}/docker/{container_id}"),
        Path(f"/sys/fs/cgroup/{controller}/system.slice/docker-{container_id}.scope"),
        Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope"),
        Path(f"/sys/fs/cgroup/docker/{container_id}"),
    ):
        if candidate.is_dir():
            return candidate
    return None


def container_cpu_seconds(container_id: str) -> float | None:
    """CPU time charged to a container's cgroup so far (survives its processes exiting)."""
    v1 = _cgroup_dir(container_id, "cpuacct")
    if v1 is not None and (v1 / "cpuacct.usage").exists():
        return int((v1 / "cpuacct.usage").read_text()) / 1e9
    v2 = _cgroup_dir(container_id, "")
    if v2 is not None and (v2 / "cpu.stat").exists():
        for line in (v2 / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    return None


def reset_memory_peak(container_id: str) -> bool:
    v1 = _cgroup_dir(container_id, "memory")
    if v1 is not None and (v1 / "memory.max_usage_in_bytes").exists():
        try:
            (v1 / "memory.max_usage_in_bytes").write_text("0")
            return True
        except OSError:
            return False
    return False


def memory_peak_bytes(container_id: str) -> int | None:
    v1 = _cgroup_dir(container_id, "memory")
    if v1 is not None and (v1 / "memory.max_usage_in_bytes").exists():
        return int((v1 / "memory.max_usage_in_bytes").read_text())
    v2 = _cgroup_dir(container_id, "")
    if v2 is not None and (v2 / "memory.peak").exists():
        return int((v2 / "memory.peak").read_text())
    return None


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def docker_proxy_pid(host_port: int) -> int | None:
    """The engine's userland proxy that forwards a published 127.0.0.1 port (None: iptables only)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"docker-proxy") and b"-host-port" in argv:
            i = argv.index(b"-host-port")
            if i + 1 < len(argv) and argv[i + 1] == str(host_port).encode():
                return int(entry.name)
    return None
