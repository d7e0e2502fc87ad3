import pytest

from tests.engine import connect_engine


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.engine)


@pytest.fixture(scope="session")
def docker_engine():
    """The real engine, shared by the integration, systemd and benchmark tests."""
    return connect_engine()
