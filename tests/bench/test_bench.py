"""Issue 5: the benchmark cannot rot. The post's stack comes up under pytest-docker and serves,
and `bench/run --smoke` (one repetition, tiny blobs, fast probes) runs every comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.client import blob_path, digest_of, get_status, pull_blob, push_blob
from bench.stacks import REPO

GOAL_ROWS = (
    "cold start",
    "registry crash",
    "nginx crash",
    "registry hang",
    "nginx hang",
    "push",
    "pull",
    "concurrent pulls",
    "RSS, idle",
    "idle CPU",
    "RSS after",
)


def test_post_stack_serves_under_pytest_docker(docker_services, post_stack):
    endpoint = post_stack.endpoint()
    assert docker_services.port_for("nginx", 443) == post_stack.nginx_port
    docker_services.wait_until_responsive(lambda: get_status(endpoint) == 200, timeout=60, pause=0.1)
    anonymous = endpoint.__class__("anonymous", "https", endpoint.port, endpoint.ca, None)
    assert get_status(anonymous) == 401
    blob = os.urandom(256 * 1024)
    digest = digest_of(blob)
    push_blob(endpoint, "smoke/post", blob, digest)
    pull_blob(endpoint, blob_path("smoke/post", digest), digest, len(blob))


def test_bench_smoke_run(engine, tmp_path):
    out = tmp_path / "results"
    result = subprocess.run(
        [str(REPO / "bench" / "run"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BENCH_PYTHON": sys.executable},
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    raw = json.loads((out / "results.json").read_text())
    assert raw["error"] == ""
    figures = [row["figure"] for row in raw["table"]]
    for expected in GOAL_ROWS:
        assert any(expected in f for f in figures), (expected, figures)
    for row in raw["table"]:
        assert row["verdict"] in ("met", "MISSED", "n/a") or row["verdict"].startswith("MISSED ("), row
    assert all(run["ok"] == run["clients"] for runs in raw["concurrent"].values() for run in runs)
    assert [r["recovered"] for r in raw["never"]] == [False, False, False]
    assert (out / "recovery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "figure" in result.stdout and "verdict" in result.stdout
    # nothing of the run is left on the engine
    leftovers = [
        c.name
        for c in engine.containers.list(all=True)
        if c.name.startswith("bench") and not c.name.startswith("benchtest")  # the fixture's stack
    ]
    assert not leftovers
