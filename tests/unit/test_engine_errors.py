"""Which engine answers are retried, which are the user's to fix, which need a new container.

The texts are the engine's own, as dockerd 20.10 printed them here.
"""

import docker.errors
import pytest
import requests

from supervisor.engine import _is_stale_task, is_transient


def api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("engine said", response=response, explanation=explanation)


STALE = "task d2fabdf00703e9ffe9097b7918b2ec1c8b7a19f3d04c8e18ea421dbd533e11ad: already exists"


@pytest.mark.parametrize(
    ("status", "explanation", "transient"),
    [
        (500, "connection reset by peer", True),
        (500, STALE, False),
        (500, "driver failed programming external connectivity: port is already allocated", False),
        (500, "No such image: registry:2", False),
        (404, "No such container: abc", False),
        (409, "Conflict. The container name is already in use", False),
    ],
)
def test_retry_only_what_a_retry_can_change(status, explanation, transient):
    assert is_transient(api_error(status, explanation)) is transient


def test_a_stale_containerd_task_is_recognised():
    assert _is_stale_task(api_error(500, STALE))
    assert not _is_stale_task(api_error(409, "Conflict. The container name is already in use"))
    assert is_transient(requests.exceptions.ConnectionError())
