from supervisor.service import Decision, ServiceState, State
from supervisor.settings import HealthSettings, RespawnSettings


def service(**respawn):
    return ServiceState(
        "registry",
        RespawnSettings(**{"limit": 10, "interval": 5, **respawn}),
        HealthSettings(interval=1, timeout=1, failures=3, start_period=2),
    )


def test_exit_respawns_until_limit():
    s = service()
    s.started(0.0)
    decisions = []
    for i in range(11):
        decisions.append(s.exited(1.0 + i * 0.01, 1, "exited"))
        if decisions[-1] is Decision.RESPAWN:
            s.started(1.0 + i * 0.01)
    assert decisions[:10] == [Decision.RESPAWN] * 10
    assert decisions[10] is Decision.GIVE_UP
    assert s.state is State.FAILED


def test_probe_threshold_and_start_period():
    s = service()
    s.started(0.0)
    # failures during the start period do not count
    assert s.probed(1.0, False, "timed out") is Decision.NOTHING and s.failed_probes == 0
    assert s.probed(1.5, True, "ok") is Decision.NOTHING and s.state is State.RUNNING
    assert s.probed(3.0, False, "timed out") is Decision.NOTHING
    assert s.probed(4.0, True, "ok") is Decision.NOTHING and s.failed_probes == 0
    assert s.probed(5.0, False, "t") is Decision.NOTHING
    assert s.probed(6.0, False, "t") is Decision.NOTHING
    assert s.probed(7.0, False, "t") is Decision.RESPAWN
    assert "3 probes failed" in s.last_problem


def test_backoff_state():
    s = service(delay=1.0, max_delay=4.0)
    s.started(0.0)
    assert s.exited(1.0, 1, "x") is Decision.WAIT
    assert s.state is State.BACKOFF and not s.backoff_over(1.5) and s.backoff_over(2.0)
    assert s.exited(1.6, 1, "x") is Decision.NOTHING  # already waiting


def test_exits_while_stopped_are_ignored():
    s = service()
    s.stopped(0.0)
    assert s.exited(1.0, 0, "x") is Decision.NOTHING
