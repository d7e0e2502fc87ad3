"""Issue 4: regsupervisor.service under a real systemd, installed as README.md says.

The tests share one systemd container and run in this order; each one starts the service itself
when it needs it running, so any one of them can also run alone.
"""

from __future__ import annotations

import contextlib
import re
import time

import docker
import pytest
import requests

from tests.engine import REGISTRY_IMAGE
from tests.integration.registry_client import pull_image, push_image
from tests.systemd.conftest import CONFIG, UNIT, USER, Machine, summary

pytestmark = pytest.mark.engine

STATUS_RUNNING = "registry running, nginx running, 0 respawns"
CRASH_IMAGE = "regsupervisor-test/crashloop:1"
START_LIMIT_BURST = 11  # regsupervisor.service: 1 start + 10 restarts, Upstart's `respawn limit 10 5`
# Priorities the daemon's events must reach journald with (<N> prefixes, sd-daemon(3)).
EXPECTED_PRIORITY = {
    "supervising": 6,
    "registry serving through the proxy": 6,
    "reloading configuration": 6,
    "configuration reloaded": 6,
    "config reload failed, keeping the running configuration": 3,
    "container died": 4,
    "respawning": 6,
    "registry respawning too fast, stopped": 3,
    "stopping": 6,
    "container stopped": 6,
}


def event_of(message: str) -> str:
    """The event of a journal line: the text before the first key=value field."""
    return re.split(r" \w+=", message, maxsplit=1)[0]


def assert_priorities(machine: Machine, after: str = "") -> None:
    entries = [e for e in machine.journal(after) if e.get("SYSLOG_IDENTIFIER") == UNIT]
    assert entries
    for entry in entries:
        message, priority = entry["MESSAGE"], int(entry["PRIORITY"])
        # journald took the <N> prefix off; no timestamp of the daemon's own precedes the text
        assert not re.match(r"<\d>|\d{4}-\d\d-\d\d|\d\d:\d\d", message), message
        expected = EXPECTED_PRIORITY.get(event_of(message))
        assert expected is None or priority == expected, (priority, message)
    # -p warning shows exactly the daemon's warnings and errors
    warnings = [e["MESSAGE"] for e in entries if int(e["PRIORITY"]) <= 4]
    assert machine.messages(after, priority="warning") == warnings


def test_security_exposure(machine, request):
    out = machine.sh(f"systemd-analyze security --no-pager {UNIT}.service")
    found = re.search(r"Overall exposure level for \S+: ([\d.]+) (\S+)", out)
    assert found, out
    figure, verdict = float(found.group(1)), found.group(2)
    summary(request.config, f"systemd-analyze security {UNIT}.service: exposure {figure} {verdict}")
    assert figure <= 4.9 and verdict == "OK", out


def test_enable_now_returns_once_the_registry_serves(machine):
    before = machine.cursor()
    machine.sh(f"systemctl enable --now {UNIT}", timeout=300)
    # Type=notify: the start job finished only after READY=1, so this first request, with no
    # retry, is already served through the proxy, and a push works.
    response = machine.session().get(f"{machine.url}/v2/", timeout=10)
    assert response.status_code == 200, response.text
    push_image(machine.session(), machine.url, "team/app")
    assert machine.wait_message("registry serving through the proxy", before)
    assert machine.sh(f"systemctl is-enabled {UNIT}").strip() == "enabled"

    status = machine.sh(f"systemctl status --no-pager {UNIT}")
    assert f'Status: "{STATUS_RUNNING}"' in status, status
    props = machine.show("Type", "ActiveState", "SubState", "StatusText", "WatchdogUSec")
    assert props == {
        "Type": "notify",
        "ActiveState": "active",
        "SubState": "running",
        "StatusText": STATUS_RUNNING,
        "WatchdogUSec": "1min",
    }, props
    # human-readable STATUS= while starting, then READY=1 with the running status
    notified = machine.notifications(before)
    ready = [n for n in notified if n.startswith("READY=1")]
    assert ready[0] == f"READY=1, STATUS={STATUS_RUNNING}", notified
    assert any(n.startswith("STATUS=registry ") for n in notified[: notified.index(ready[0])]), notified
    assert_priorities(machine, before)


def test_reload_applies_the_edited_config(machine):
    machine.ensure_running()
    pid = machine.show("MainPID")["MainPID"]
    before = machine.cursor()
    machine.write_config('[auth]\nrealm = "Reloaded Realm"\n')
    machine.sh(f"systemctl reload {UNIT}")
    reloaded = machine.wait_message("configuration reloaded", before)
    assert "changed=auth" in reloaded[0], reloaded
    machine.wait_message("registry serving through the proxy", before)
    assert machine.sh(f"systemctl is-active {UNIT}").strip() == "active"
    assert machine.show("MainPID", "NRestarts") == {"MainPID": pid, "NRestarts": "0"}
    # applied: nginx asks for the new realm
    challenge = requests.get(f"{machine.url}/v2/", verify=machine.ca, timeout=10)
    assert challenge.status_code == 401
    assert 'realm="Reloaded Realm"' in challenge.headers["WWW-Authenticate"]
    assert_reload_notified(machine, before)
    assert_priorities(machine, before)


def assert_reload_notified(machine: Machine, after: str) -> None:
    """RELOADING=1 with MONOTONIC_USEC, then READY=1: systemd shows "reloading" in between."""
    notified = machine.notifications(after)
    reloading = [i for i, n in enumerate(notified) if re.fullmatch(r"RELOADING=1, MONOTONIC_USEC=\d+", n)]
    assert reloading, notified
    assert any(n.startswith("READY=1, STATUS=") for n in notified[reloading[0] :]), notified


def test_broken_config_on_reload_keeps_the_service(machine):
    machine.ensure_running()
    pid = machine.show("MainPID")["MainPID"]
    before = machine.cursor()
    good = machine.sh(f"cat {CONFIG}")
    machine.write(CONFIG, good + "bogus = 1\n")
    try:
        machine.sh(f"systemctl reload {UNIT}")
        failed = machine.wait_message("config reload failed", before, priority="err")
        assert "bogus" in failed[0], failed
        assert machine.sh(f"systemctl is-active {UNIT}").strip() == "active"
        props = machine.show("MainPID", "StatusText", "ActiveState")
        assert props == {"MainPID": pid, "StatusText": STATUS_RUNNING, "ActiveState": "active"}
        digest = push_image(machine.session(), machine.url, "team/broken-config")
        assert pull_image(machine.session(), machine.url, "team/broken-config") == digest
        assert_reload_notified(machine, before)
        assert_priorities(machine, before)
    finally:
        machine.write(CONFIG, good)


def test_stop_stops_both_containers_and_keeps_the_data(machine):
    machine.ensure_running()
    digest = push_image(machine.session(), machine.url, "team/kept")
    before = machine.cursor()
    machine.sh(f"systemctl stop {UNIT}", timeout=120)
    props = machine.show("ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, props
    states = {s: machine.container_state(s) for s in ("registry", "nginx")}
    assert not any(s["Running"] for s in states.values()), states
    assert states["nginx"]["FinishedAt"] <= states["registry"]["FinishedAt"]
    stopped = [m for m in machine.messages(before) if m.startswith("container stopped")]
    assert len(stopped) == 2, stopped
    assert "STOPPING=1" in machine.notifications(before)
    # the data, certificates and users are all still there ...
    repositories = machine.state_dir / "data" / "docker" / "registry" / "v2" / "repositories"
    assert (repositories / "team" / "kept").is_dir()
    assert (machine.state_dir / "tls" / "ca.crt").is_file()
    assert USER[0] in (machine.state_dir / "nginx" / "htpasswd").read_text()
    # ... and served again after a start
    machine.sh(f"systemctl start {UNIT}", timeout=300)
    assert pull_image(machine.session(), machine.url, "team/kept") == digest
    assert_no_secret_in_the_journal(machine)


def assert_no_secret_in_the_journal(machine: Machine) -> None:
    journal = machine.sh("journalctl -o export --no-pager")
    state = machine.state_dir
    secrets = {
        "password": USER[1],
        "password hash": (state / "nginx" / "htpasswd").read_text().split(":", 1)[1].strip(),
        "http secret": (state / "http_secret").read_text().strip(),
        "private key": "PRIVATE KEY",
    }
    if (state / "probe_token").exists():
        secrets["probe token"] = (state / "probe_token").read_text().strip()
    for what, value in secrets.items():
        assert value and value not in journal, f"{what} in the journal"


def test_watchdog_catches_a_wedged_loop(machine):
    machine.ensure_running()
    # the shipped WatchdogSec=60s, shortened so that the test takes seconds
    dropin = "/etc/systemd/system/regsupervisor.service.d/watchdog.conf"
    machine.write(dropin, "[Service]\nWatchdogSec=3s\n")
    try:
        machine.sh(f"systemctl daemon-reload && systemctl restart {UNIT}", timeout=300)
        before = machine.cursor()
        first = machine.show("MainPID", "NRestarts", "ActiveEnterTimestampMonotonic")
        time.sleep(4.5)  # longer than WatchdogSec: still running only because the loop pings
        now = machine.show("MainPID", "ActiveState", "WatchdogTimestampMonotonic")
        assert (now["MainPID"], now["ActiveState"]) == (first["MainPID"], "active"), now
        assert int(now["WatchdogTimestampMonotonic"]) > int(first["ActiveEnterTimestampMonotonic"])
        assert machine.notifications(before).count("WATCHDOG=1") >= 2
        # a wedged loop (the daemon stopped dead) is killed and restarted by systemd
        machine.sh(f"kill -STOP {first['MainPID']}")

        def restarted() -> bool:
            props = machine.show("ActiveState", "MainPID")
            return props["ActiveState"] == "active" and props["MainPID"] not in ("0", first["MainPID"])

        machine.wait_for("systemd to restart the daemon", restarted, timeout=60)
        systemd_says = machine.messages(before, identifier="systemd")
        assert f"{UNIT}.service: Watchdog timeout (limit 3s)!" in systemd_says, systemd_says
        assert f"{UNIT}.service: Failed with result 'watchdog'." in systemd_says, systemd_says
        assert int(machine.show("NRestarts")["NRestarts"]) == int(first["NRestarts"]) + 1
        push_image(machine.session(), machine.url, "team/after-watchdog")
    finally:
        machine.sh(f"rm -f {dropin} && systemctl daemon-reload")


def make_crash_image(engine) -> None:
    """registry:2 told to read a config file that does not exist: it exits 1 at once."""
    with contextlib.suppress(docker.errors.ImageNotFound):
        engine.images.get(CRASH_IMAGE)
        return
    helper = engine.containers.create(REGISTRY_IMAGE, command=["/etc/docker/registry/missing.yml"])
    try:
        helper.commit(repository=CRASH_IMAGE.split(":")[0], tag=CRASH_IMAGE.split(":")[1])
    finally:
        helper.remove()


def test_crash_loop_ends_with_the_unit_failed(machine, engine):
    make_crash_image(engine)
    machine.sh(f"systemctl stop {UNIT}", timeout=120)
    # one respawn allowed per daemon run, so that each run gives up within seconds
    machine.write_config("[respawn]\nlimit = 1\ninterval = 5.0\n", registry_image=CRASH_IMAGE)
    machine.sh(f"systemctl reset-failed {UNIT} || true")
    before = machine.cursor()
    # no READY=1 ever: the start job fails when the first run exits 3; systemd goes on restarting
    assert machine.run(f"systemctl start {UNIT}", timeout=300).code != 0
    machine.wait_for(
        "the unit to fail",
        lambda: machine.show("ActiveState")["ActiveState"] == "failed",
        timeout=300,
    )
    assert machine.sh(f"systemctl is-failed {UNIT}").strip() == "failed"
    systemd_says = machine.messages(before, identifier="systemd")
    refused = f"{UNIT}.service: Start request repeated too quickly."
    assert systemd_says.count(refused) == 1, systemd_says
    assert f"{UNIT}.service: Failed with result 'exit-code'." in systemd_says[systemd_says.index(refused) :]
    # 1 start + 10 restarts ran; systemd counted the 11th restart too, and refused to run it
    props = machine.show("Result", "NRestarts", "ExecMainStatus")
    assert props == {"Result": "exit-code", "NRestarts": "11", "ExecMainStatus": "3"}, props
    runs = {e["_PID"] for e in machine.journal(before) if e.get("SYSLOG_IDENTIFIER") == UNIT}
    assert len(runs) == START_LIMIT_BURST
    errors = machine.messages(before, priority="err")
    too_fast = [m for m in errors if m.startswith("registry respawning too fast, stopped")]
    assert len(too_fast) == START_LIMIT_BURST, errors
    assert not any(machine.container_state(s)["Running"] for s in ("registry", "nginx"))
    assert_priorities(machine, before)
