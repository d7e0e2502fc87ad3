"""bench/run: every comparison in one run on one engine; prints the table, writes the JSON of raw
figures and the recovery chart. See README.md, "Benchmark"."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import docker
import docker.errors

from bench import report, scenarios, stacks, sysstat
from bench.client import digest_of, push_blob
from bench.scenarios import FULL, SMOKE, Profile, Way, log


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="one repetition, tiny blobs, fast probes (< 90 s)"
    )
    parser.add_argument("--out", default=str(stacks.REPO / "bench-results"), help="directory for results")
    parser.add_argument("--reps", type=int, help="repetitions of each timed figure")
    parser.add_argument("--blob-mib", type=float, help="size of the push/pull blob")
    parser.add_argument("--concurrent", type=int, help="number of concurrent pulls")
    parser.add_argument("--concurrent-mib", type=float, help="size of the concurrently pulled blob")
    parser.add_argument("--idle-seconds", type=float, help="footprint window")
    parser.add_argument("--respawns", type=int, help="registry crashes for the RSS-after-respawns figure")
    return parser.parse_args(argv)


def choose_profile(args: argparse.Namespace) -> Profile:
    profile = SMOKE if args.smoke else FULL
    overrides = {
        k: v
        for k, v in (
            ("reps", args.reps),
            ("blob_mib", args.blob_mib),
            ("concurrent", args.concurrent),
            ("concurrent_mib", args.concurrent_mib),
            ("idle_seconds", args.idle_seconds),
            ("respawns", args.respawns),
        )
        if v is not None
    }
    return dataclasses.replace(profile, **overrides)


def preflight(client: docker.DockerClient) -> None:
    for image in (stacks.REGISTRY_IMAGE, stacks.NGINX_IMAGE):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            raise stacks.BenchError(f"image {image} missing: run scripts/build-images") from None
    for tool in (stacks.COMPOSE_COMMAND, "htpasswd"):
        if shutil.which(tool) is None:
            raise stacks.BenchError(f"{tool} not found (bench/run installs docker-compose and apache2-utils)")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise stacks.BenchError("matplotlib missing: pip install the project's test extra") from None


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def helpers(
    client: docker.DockerClient, tmp: Path, run_id: str, daemon: stacks.DaemonStack, blob: bytes
) -> tuple[stacks.HelperNginx, stacks.HelperNginx]:
    """nginx serving the blob as a static file (TLS ceiling), and the daemon's generated config plus
    the proposed tuning, on the daemon's network (the same registry behind it)."""
    pki = stacks.make_pki(tmp / "static" / "pki", names=("localhost",))
    conf = tmp / "static" / "conf"
    srv = tmp / "static" / "srv"
    conf.mkdir(parents=True)
    srv.mkdir()
    (conf / "static.conf").write_text(stacks.STATIC_CONF)
    shutil.copy(pki.cert, conf / "server.crt")
    shutil.copy(pki.key, conf / "server.key")
    (srv / "blob").write_bytes(blob)
    srv.chmod(0o755)
    static = stacks.HelperNginx(
        client,
        f"bench{run_id}-static",
        run_id,
        conf,
        "static",
        str(pki.ca),
        mounts={str(srv): {"bind": "/srv", "mode": "ro"}},
    )
    static.start()

    tuned_dir = tmp / "tuned"
    tuned_dir.mkdir()
    generated = daemon.state_dir / "nginx"
    (tuned_dir / "registry.conf").write_text(stacks.tuned_config((generated / "registry.conf").read_text()))
    for name in ("server.crt", "server.key", "htpasswd"):
        shutil.copy(generated / name, tuned_dir / name)
    (tuned_dir / "htpasswd").chmod(0o644)
    tuned = stacks.HelperNginx(
        client,
        f"bench{run_id}-tuned",
        run_id,
        tuned_dir,
        "tuned",
        str(daemon.ca),
        auth=stacks.USER,
        network=daemon.name,
    )
    tuned.start()
    return static, tuned


def keep_logs(tmp: Path, out: Path) -> None:
    for name, source in (
        ("daemon.log", tmp / "daemon" / "daemon.log"),
        ("compose-up.log", tmp / "compose-up.log"),
    ):
        if source.exists():
            shutil.copy(source, out / name)


def run(profile: Profile, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    client = docker.from_env(timeout=300)
    client.ping()
    preflight(client)
    run_id = secrets.token_hex(3)
    tmp = Path(tempfile.mkdtemp(prefix="regsupervisor-bench-"))
    tmp.chmod(0o755)
    raw: dict[str, Any] = {
        "profile": dataclasses.asdict(profile),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": stacks.engine_versions(client),
        "cpus": os.cpu_count(),
        "loadavg_before": sysstat.loadavg(),
    }
    began = time.monotonic()
    error = ""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    cleanup = contextlib.ExitStack()
    cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
    cleanup.callback(keep_logs, tmp, out)
    try:
        daemon = stacks.DaemonStack(client, tmp / "daemon", f"bench{run_id}", health=profile.health_toml)
        cleanup.callback(daemon.cleanup)
        # runs before daemon.cleanup: the tuned nginx sits on the daemon's network
        cleanup.callback(stacks.remove_labelled, client, run_id)
        post = stacks.ComposeStack(client, tmp / "post", f"benchpost{run_id}")
        cleanup.callback(post.cleanup)
        always = stacks.ComposeStack(client, tmp / "always", f"benchalways{run_id}", restart_always=True)
        cleanup.callback(always.cleanup)
        daemon.add_user()
        size = int(profile.blob_mib * 2**20)
        blob = os.urandom(size)
        digest = digest_of(blob)
        small = os.urandom(int(profile.concurrent_mib * 2**20))
        small_digest = digest_of(small)

        log(f"profile {profile.name}: cold start, {profile.reps} repetitions per stack")
        raw["cold_start"] = scenarios.cold_start(daemon, post, profile)

        log("bringing up the stacks for the rest of the run")
        daemon.start()
        scenarios.wait_serving(daemon.endpoint(), time.monotonic(), 90, daemon.check_alive)
        for stack in (post, always):
            stack.up()
            scenarios.wait_serving(stack.endpoint(), time.monotonic(), 90, scenarios._nothing)
        static, tuned = helpers(client, tmp, run_id, daemon, blob)
        d_reg, d_ngx = daemon.container_name("registry"), daemon.container_name("nginx")
        ways = [
            Way("direct", daemon.direct(), {"registry": d_reg}),
            Way("regsupervisor", daemon.endpoint(), {"nginx": d_ngx, "registry": d_reg}),
            Way(
                "post",
                post.endpoint(),
                {"nginx": post.container_name("nginx"), "registry": post.container_name("registry")},
            ),
            Way("tuned", tuned.endpoint(), {"nginx": tuned.name, "registry": d_reg}),
            Way("static", static.endpoint(), {"nginx": static.name}, push=False),
        ]
        log(f"throughput: {profile.blob_mib:g} MiB blob, {profile.reps} repetitions")
        raw["throughput"] = scenarios.throughput(client, ways, blob, digest, profile)
        del blob

        log(f"{profile.concurrent} concurrent pulls of {profile.concurrent_mib:g} MiB")
        push_blob(daemon.direct(), "bench/concurrent", small, small_digest)
        push_blob(post.direct(), "bench/concurrent", small, small_digest)
        by_key = {w.key: w for w in ways}
        raw["concurrent_size"] = len(small)
        raw["concurrent"] = {"regsupervisor": [], "tuned": [], "post": []}
        for rep in range(profile.concurrent_reps):
            for key in ("regsupervisor", "tuned", "post"):
                if key == "post" and rep > 0:
                    continue  # a reference figure: once is enough, it spools to disk and is slow
                result = scenarios.concurrent_pulls(
                    client, by_key[key], small_digest, len(small), profile.concurrent
                )
                raw["concurrent"][key].append(result)
                log(
                    f"concurrent via {key}: {result['ok']}/{result['clients']} ok, {result['mb_per_s']:.0f} MB/s"
                )
        raw["auth_latency"] = scenarios.auth_latency([daemon.endpoint(), post.endpoint()])

        log("crash recovery")
        raw["crash"] = scenarios.crash_reps(client, daemon, always, profile)
        log("hang recovery")
        raw["hang"] = scenarios.hang_reps(client, daemon, profile)
        log("faults compose does not recover from")
        raw["never"] = scenarios.never_reps(client, post, always, profile)

        log(f"footprint: {profile.idle_seconds:g} s idle, next to docker-compose up in the foreground")
        raw["footprint"] = scenarios.footprint(client, daemon, post, profile, str(tmp / "compose-up.log"))
        log(f"RSS after {profile.respawns} registry respawns")
        raw["respawns"] = scenarios.respawn_loop(client, daemon, profile.respawns)
        stacks.remove_labelled(client, run_id)
        daemon.down()
    except (Exception, KeyboardInterrupt) as exc:
        error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        log("cleaning up")
        try:
            cleanup.close()
        except Exception as exc:
            error = error or f"cleanup failed: {exc!r}"
            traceback.print_exc()
        leftovers = stacks.sweep(client, run_id)
        if leftovers:
            log(f"removed leftovers: {', '.join(leftovers)}")
    raw["seconds"] = round(time.monotonic() - began, 1)
    raw["loadavg_after"] = sysstat.loadavg()
    raw["error"] = error
    rows = report.build_rows(raw, profile)
    raw["table"] = [dataclasses.asdict(r) for r in rows]
    (out / "results.json").write_text(json.dumps(raw, indent=1, default=str))
    chart_path = out / "recovery.png"
    if raw.get("crash") or raw.get("never"):
        report.chart(raw, chart_path, profile)
    print()
    print(report.render_table(rows))
    for extra in (report.cpu_table(raw), report.phases_table(raw)):
        if extra:
            print()
            print(extra)
    print()
    print(
        f"run: {raw['seconds']:.0f} s, load average before {raw['loadavg_before']} after {raw['loadavg_after']}; "
        f"raw figures: {out / 'results.json'}; chart: {chart_path}"
    )
    if error:
        print(f"bench: FAILED: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(choose_profile(args), Path(args.out))
    except stacks.BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
