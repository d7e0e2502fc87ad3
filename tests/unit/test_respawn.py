from supervisor.respawn import Backoff, RespawnLimit


def test_upstart_boundary_ten_allowed_eleventh_refused():
    limit = RespawnLimit(limit=10, interval=5)
    assert all(limit.allow(100.0 + i * 0.1) for i in range(10))
    assert limit.in_window(101.0) == 10
    assert limit.allow(101.1) is False


def test_window_is_fixed_not_sliding():
    limit = RespawnLimit(limit=2, interval=5)
    assert limit.allow(0.0)  # opens the window at 0
    assert limit.allow(4.0)
    # 5.0 is outside [0, 5): a new window opens even though 4.0 was one second ago
    assert limit.allow(5.0)
    assert limit.in_window(5.0) == 1
    assert limit.allow(9.0)
    assert limit.allow(9.9) is False


def test_unlimited():
    for limit in (RespawnLimit(0, 5), RespawnLimit(10, 0)):
        assert all(limit.allow(i * 0.001) for i in range(1000))


def test_backoff_doubles_and_resets():
    backoff = Backoff(delay=1, max_delay=5, reset_after=10)
    assert [backoff.next_delay(None, t) for t in range(5)] == [1, 2, 4, 5, 5]
    assert backoff.next_delay(healthy_since=100, now=111) == 1


def test_backoff_off_by_default():
    assert Backoff(delay=0, max_delay=60, reset_after=10).next_delay(None, 0) == 0
