"""The measurements. Each returns plain data (lists of numbers, dicts) that report.py summarises
and that goes into the JSON file as it is."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from bench import sysstat
from bench.client import (
    Endpoint,
    Poller,
    TransferError,
    blob_path,
    get_status,
    pull_blob,
    push_blob,
)
from bench.stacks import BenchError, ComposeStack, DaemonStack, parse_docker_time

Stack = DaemonStack | ComposeStack


@dataclass(frozen=True)
class Profile:
    name: str
    reps: int
    warmup: bool
    blob_mib: float
    concurrent: int
    concurrent_mib: float
    concurrent_reps: int
    idle_seconds: float
    respawns: int
    never_window: float
    poll_period: float
    # polling before and after each fault, for the chart
    pre: float = 1.0
    tail: float = 1.0
    # the daemon's probe settings ([health]); the hang goal is interval * failures + 1 s
    interval: float = 2.0
    timeout: float = 1.0
    failures: int = 3

    @property
    def health_toml(self) -> str:
        if (self.interval, self.timeout, self.failures) == (2.0, 1.0, 3):
            return ""  # the daemon's defaults, as shipped
        return f"interval = {self.interval}\ntimeout = {self.timeout}\nfailures = {self.failures}\n"

    @property
    def hang_goal(self) -> float:
        return self.interval * self.failures + 1.0


FULL = Profile(
    name="full",
    reps=5,
    warmup=True,
    blob_mib=512,
    concurrent=50,
    concurrent_mib=64,
    concurrent_reps=3,
    idle_seconds=60,
    respawns=200,
    never_window=15,
    poll_period=0.1,
)
SMOKE = Profile(
    name="smoke",
    reps=1,
    warmup=False,
    blob_mib=2,
    concurrent=4,
    concurrent_mib=1,
    concurrent_reps=1,
    idle_seconds=2,
    respawns=2,
    never_window=2.5,
    poll_period=0.1,
    pre=0.5,
    tail=0.5,
    interval=0.5,
    timeout=0.5,
    failures=3,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_serving(endpoint: Endpoint, started: float, timeout: float, alive: Callable[[], None]) -> float:
    """Poll one authenticated GET /v2/ at a time until 200; seconds since `started`."""
    deadline = started + timeout
    while time.monotonic() < deadline:
        alive()
        if get_status(endpoint, timeout=1.0) == 200:
            return time.monotonic() - started
        time.sleep(0.02)
    raise BenchError(f"{endpoint.label}: no authenticated 200 on /v2/ within {timeout:.0f}s")


def _nothing() -> None:
    pass


# --- cold start --------------------------------------------------------------------------------


def cold_start(daemon: DaemonStack, compose: ComposeStack, profile: Profile) -> dict[str, Any]:
    """Nothing running (images present, files made) -> first authenticated 200 through the proxy."""
    out: dict[str, list[float]] = {"regsupervisor": [], "compose": []}
    runs = profile.reps + (1 if profile.warmup else 0)
    for rep in range(runs):
        timed = rep >= runs - profile.reps
        order = ["compose", "regsupervisor"] if rep % 2 else ["regsupervisor", "compose"]
        for which in order:
            if which == "regsupervisor":
                started = time.monotonic()
                daemon.start()
                try:
                    seconds = wait_serving(daemon.endpoint(), started, 90, daemon.check_alive)
                finally:
                    daemon.down()
            else:
                started = time.monotonic()
                with compose.services():
                    seconds = wait_serving(compose.endpoint(), started, 90, _nothing)
            if timed:
                out[which].append(seconds)
            log(f"cold start {which}: {seconds:.2f}s{'' if timed else ' (warm-up, not counted)'}")
    return out


# --- faults ------------------------------------------------------------------------------------


def main_pid(client: docker.DockerClient, name: str) -> int:
    pid = int(client.api.inspect_container(name)["State"]["Pid"])
    if pid <= 1:
        raise BenchError(f"{name} is not running (pid {pid})")
    return pid


def container_pids(client: docker.DockerClient, name: str) -> list[int]:
    rows = client.api.top(name, ps_args="-eo user,pid")["Processes"]
    pids = [int(row[1]) for row in rows if int(row[1]) > 1]
    if not pids:
        raise BenchError(f"{name}: no processes")
    return pids


def freeze(pids: list[int]) -> None:
    """SIGSTOP every process of the container: a hang, as Docker still sees it running."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)


def thaw(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def fault(
    client: docker.DockerClient,
    stack: Stack,
    service: str,
    kind: str,
    profile: Profile,
    window: float,
) -> dict[str, Any]:
    """Crash (SIGKILL of the main process) or hang (SIGSTOP of all) one container while polling
    authenticated /v2/; seconds from the fault to the first 200 of a request sent after it."""
    name = stack.container_name(service)
    endpoint = stack.endpoint()
    pre, tail = profile.pre, profile.tail
    frozen: list[int] = []
    with Poller(
        endpoint, period=profile.poll_period, timeout=2.0, max_seconds=window + pre + tail + 5
    ) as poller:
        time.sleep(pre)
        # look the processes up first: the clock starts when the signal is sent
        pids = [main_pid(client, name)] if kind == "crash" else container_pids(client, name)
        wall0, t0 = time.time(), time.monotonic()
        if kind == "crash":
            os.kill(pids[0], signal.SIGKILL)
        else:
            freeze(pids)
            frozen = pids
        found = poller.wait_ok_after(t0, window)
        if found is not None:
            time.sleep(tail)
    samples = poller.snapshot()
    if frozen and found is None:
        thaw(frozen)
    state = client.api.inspect_container(name)["State"]
    phases = {}
    for key, field in (("engine_saw_exit", "FinishedAt"), ("engine_started", "StartedAt")):
        try:
            value = parse_docker_time(state[field]) - wall0
            phases[key] = round(value, 4) if value > -1 else None
        except (KeyError, ValueError):
            phases[key] = None
    before = [s for s in samples if s.start < t0]
    return {
        "stack": stack.label,
        "service": service,
        "kind": kind,
        "recovered": found is not None,
        "seconds": None if found is None else found.end - t0,
        "window": window,
        "ok_before": sum(s.ok for s in before),
        "requests_before": len(before),
        "phases": phases,
        "samples": [(round(s.start - t0, 4), round(s.end - t0, 4), s.status) for s in samples],
    }


def crash_reps(
    client: docker.DockerClient,
    daemon: DaemonStack,
    always: ComposeStack,
    profile: Profile,
) -> list[dict[str, Any]]:
    results = []
    for rep in range(profile.reps):
        for service in ("registry", "nginx"):
            for stack in (always, daemon):
                if stack is always:
                    # Docker's first restart waits 100 ms; later ones double that unless the
                    # container ran 10 s: give it those 10 s, so every crash meets the 100 ms.
                    info = client.api.inspect_container(stack.container_name(service))
                    if info["RestartCount"] > 0:
                        started = parse_docker_time(info["State"]["StartedAt"])
                        time.sleep(max(0.0, started + 10.5 - time.time()))
                else:
                    daemon.wait_supervision(service)
                result = fault(client, stack, service, "crash", profile, window=30)
                results.append(result)
                log(f"crash {service} rep {rep + 1} {stack.label}: {_fmt(result)}")
                if not result["recovered"]:
                    raise BenchError(f"{stack.label} did not recover from a {service} crash")
    return results


def hang_reps(client: docker.DockerClient, daemon: DaemonStack, profile: Profile) -> list[dict[str, Any]]:
    results = []
    for rep in range(profile.reps):
        for service in ("registry", "nginx"):
            # probe failures only count once the daemon saw the (re)started container healthy
            daemon.wait_supervision(service)
            daemon.wait_supervision("registry" if service == "nginx" else "nginx")
            result = fault(client, daemon, service, "hang", profile, window=profile.hang_goal * 4 + 10)
            results.append(result)
            log(f"hang {service} rep {rep + 1} regsupervisor: {_fmt(result)}")
            if not result["recovered"]:
                raise BenchError(f"regsupervisor did not recover from a {service} hang")
    return results


def never_reps(
    client: docker.DockerClient, post: ComposeStack, always: ComposeStack, profile: Profile
) -> list[dict[str, Any]]:
    """The faults compose cannot recover from, observed for a bounded window each."""
    results = []
    for stack, service, kind in (
        (always, "registry", "hang"),
        (always, "nginx", "hang"),
        (post, "registry", "crash"),
    ):
        result = fault(client, stack, service, kind, profile, window=profile.never_window)
        results.append(result)
        log(f"{kind} {service} {stack.label}: {_fmt(result)}")
    return results


def _fmt(result: dict[str, Any]) -> str:
    if result["recovered"]:
        return f"serving again after {result['seconds']:.2f}s"
    return f"not serving {result['window']:.0f}s later"


# --- throughput --------------------------------------------------------------------------------


@dataclass
class Way:
    """One way to move the blob, and the containers whose CPU it costs."""

    key: str
    endpoint: Endpoint
    containers: dict[str, str]  # role -> container name
    push: bool = True


def measure(client: docker.DockerClient, way: Way, action: Callable[[], float], size: int) -> dict[str, Any]:
    ids = {role: client.api.inspect_container(name)["Id"] for role, name in way.containers.items()}
    cpu0 = {role: sysstat.container_cpu_seconds(cid) for role, cid in ids.items()}
    # Published 127.0.0.1 ports go through the engine's docker-proxy: its copying is ours too.
    proxy_pid = sysstat.docker_proxy_pid(way.endpoint.port)
    proxy0 = sysstat.cpu_seconds(proxy_pid) if proxy_pid else None
    busy0, own0, wall0 = sysstat.machine_busy_seconds(), time.process_time(), time.perf_counter()
    try:
        seconds = action()
    except TransferError as exc:
        # a failed transfer is a figure too; let the stack come back before the next one
        log(f"transfer failed: {exc}")
        path = "/" if way.endpoint.scheme == "http" else "/v2/"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and get_status(way.endpoint, path=path) != 200:
            time.sleep(0.2)
        return {"error": str(exc), "seconds": None, "mb_per_s": None}
    wall = time.perf_counter() - wall0
    busy, own = sysstat.machine_busy_seconds() - busy0, time.process_time() - own0
    cpu: dict[str, float | None] = {}
    for role, cid in ids.items():
        after = sysstat.container_cpu_seconds(cid)
        before = cpu0[role]
        cpu[role] = None if after is None or before is None else round(after - before, 4)
    cpu["client"] = round(own, 4)
    if proxy_pid and proxy0 is not None:
        cpu["docker-proxy"] = round(sysstat.cpu_seconds(proxy_pid) - proxy0, 4)
    ours = sum(v for v in cpu.values() if v)
    return {
        "seconds": seconds,
        "mb_per_s": size / seconds / 1e6,
        "cpu_seconds": cpu,
        "machine_busy_seconds": round(busy, 4),
        "machine_capacity_seconds": round(wall * (os.cpu_count() or 1), 4),
        "others_share": round(max(0.0, busy - ours) / max(busy, 1e-9), 4),
    }


def throughput(
    client: docker.DockerClient, ways: list[Way], blob: bytes, digest: str, profile: Profile
) -> dict[str, Any]:
    size = len(blob)
    push: dict[str, list[dict[str, Any]]] = {w.key: [] for w in ways if w.push}
    pull: dict[str, list[dict[str, Any]]] = {w.key: [] for w in ways}
    repo = "bench/big"
    for rep in range(profile.reps):
        for way in ways:
            if way.push:
                push[way.key].append(
                    measure(client, way, lambda w=way: push_blob(w.endpoint, repo, blob, digest), size)
                )
        for way in ways:
            path = blob_path(repo, digest) if way.push else "/blob"
            pull[way.key].append(
                measure(client, way, lambda w=way, p=path: pull_blob(w.endpoint, p, digest, size), size)
            )
        log(
            f"throughput rep {rep + 1}: push "
            + ", ".join(f"{k} {_rate(v[-1])}" for k, v in push.items())
            + " MB/s; pull "
            + ", ".join(f"{k} {_rate(v[-1])}" for k, v in pull.items())
            + " MB/s"
        )
    return {"size": size, "push": push, "pull": pull}


def _rate(run: dict[str, Any]) -> str:
    return "FAILED" if run.get("error") else f"{run['mb_per_s']:.0f}"


def concurrent_pulls(
    client: docker.DockerClient, way: Way, digest: str, size: int, count: int
) -> dict[str, Any]:
    """`count` clients pull the same blob at once, each on its own connection, digest checked."""
    nginx_id = client.api.inspect_container(way.containers["nginx"])["Id"]
    peak_reset = sysstat.reset_memory_peak(nginx_id)
    errors: list[str] = []
    done: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(count + 1)

    def one() -> None:
        barrier.wait(60)
        try:
            pull_blob(way.endpoint, blob_path("bench/concurrent", digest), digest, size, timeout=600)
            with lock:
                done.append(time.perf_counter())
        except TransferError as exc:
            with lock:
                errors.append(str(exc))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    barrier.wait(60)
    started = time.perf_counter()
    cpu0 = sysstat.container_cpu_seconds(nginx_id)
    for t in threads:
        t.join(900)
    wall = time.perf_counter() - started
    cpu1 = sysstat.container_cpu_seconds(nginx_id)
    peak = sysstat.memory_peak_bytes(nginx_id) if peak_reset else None
    return {
        "clients": count,
        "ok": len(done),
        "errors": errors[:5],
        "seconds": wall,
        "mb_per_s": len(done) * size / wall / 1e6,
        "nginx_cpu_seconds": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        "nginx_memory_peak_bytes": peak,
    }


def auth_latency(endpoints: list[Endpoint], count: int = 20) -> dict[str, list[float]]:
    """Sequential authenticated GET /v2/, each on a new TLS connection: what one request costs."""
    out: dict[str, list[float]] = {e.label: [] for e in endpoints}
    for _ in range(count):
        for endpoint in endpoints:
            started = time.perf_counter()
            status = get_status(endpoint, timeout=5.0)
            if status != 200:
                raise BenchError(f"{endpoint.label}: GET /v2/ -> {status}")
            out[endpoint.label].append(time.perf_counter() - started)
    return out


# --- footprint ---------------------------------------------------------------------------------


def footprint(
    client: docker.DockerClient, daemon: DaemonStack, post: ComposeStack, profile: Profile, log_path: str
) -> dict[str, Any]:
    """The daemon next to `docker-compose up` in the foreground (what the post's Upstart job runs),
    both idle for the same window."""
    assert daemon.process is not None
    with open(log_path, "wb") as out:
        compose = subprocess.Popen(post.compose_argv("up"), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if compose.poll() is not None:
                raise BenchError(f"docker-compose up exited {compose.returncode}")
            if b"Attaching to" in Path(log_path).read_bytes():
                break
            time.sleep(0.1)
        else:
            raise BenchError("docker-compose up did not attach within 90s")
        time.sleep(2)
        containers = {
            f"regsupervisor {s}": client.api.inspect_container(daemon.container_name(s))["Id"]
            for s in ("registry", "nginx")
        } | {
            f"compose {s}": client.api.inspect_container(post.container_name(s))["Id"]
            for s in ("registry", "nginx")
        }
        pids = {"regsupervisor": daemon.process.pid, "docker-compose up": compose.pid}
        cpu0 = {k: sysstat.cpu_seconds(p) for k, p in pids.items()}
        ccpu0 = {k: sysstat.container_cpu_seconds(c) for k, c in containers.items()}
        rss: dict[str, list[int]] = {k: [] for k in pids}
        started = time.monotonic()
        while time.monotonic() - started < profile.idle_seconds:
            for k, p in pids.items():
                rss[k].append(sysstat.rss_bytes(p))
            time.sleep(min(1.0, profile.idle_seconds / 5))
        elapsed = time.monotonic() - started
        cpu = {k: sysstat.cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        ccpu: dict[str, float | None] = {}
        for k, c in containers.items():
            after, before = sysstat.container_cpu_seconds(c), ccpu0[k]
            ccpu[k] = None if after is None or before is None else after - before
        return {
            "seconds": elapsed,
            "rss_bytes": rss,
            "cpu_seconds": cpu,
            "cpu_percent": {k: 100 * v / elapsed for k, v in cpu.items()},
            "container_cpu_seconds": ccpu,
        }
    finally:
        if compose.poll() is None:
            compose.send_signal(signal.SIGTERM)
            try:
                compose.wait(60)
            except subprocess.TimeoutExpired:
                compose.kill()
                compose.wait(10)


def respawn_loop(client: docker.DockerClient, daemon: DaemonStack, count: int) -> dict[str, Any]:
    """Crash the registry `count` times, each time waiting until the respawned one answers."""
    assert daemon.process is not None
    name = daemon.container_name("registry")
    rss0, cpu0 = sysstat.rss_bytes(daemon.process.pid), sysstat.cpu_seconds(daemon.process.pid)
    latencies = []
    direct = daemon.direct()
    for i in range(count):
        old = main_pid(client, name)
        started = time.monotonic()
        os.kill(old, signal.SIGKILL)
        deadline = started + 30
        while True:
            daemon.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"respawn {i + 1}: registry not back within 30s")
            pid = int(client.api.inspect_container(name)["State"]["Pid"])
            if pid > 1 and pid != old and get_status(direct, path="/", timeout=1.0) == 200:
                break
            time.sleep(0.01)
        latencies.append(time.monotonic() - started)
        if (i + 1) % 50 == 0:
            log(
                f"respawns: {i + 1}/{count}, daemon RSS {sysstat.rss_bytes(daemon.process.pid) / 2**20:.1f} MiB"
            )
    wait_serving(daemon.endpoint(), time.monotonic(), 60, daemon.check_alive)
    time.sleep(2)
    return {
        "count": count,
        "latencies": latencies,
        "rss_before_bytes": rss0,
        "rss_after_bytes": sysstat.rss_bytes(daemon.process.pid),
        "cpu_seconds": sysstat.cpu_seconds(daemon.process.pid) - cpu0,
        "respawns_total_reported": daemon.report()
        .get("services", {})
        .get("registry", {})
        .get("respawns_total"),
    }
