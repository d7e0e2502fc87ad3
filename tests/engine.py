"""What every engine-backed test needs: the images it runs, and one rule for a missing engine
(fail under CI or tests/run, skip in a bare `pytest` on a machine without Docker)."""

from __future__ import annotations

import os

import docker
import pytest

REGISTRY_IMAGE = os.environ.get("REGSUPERVISOR_TEST_REGISTRY_IMAGE", "registry:2")
NGINX_IMAGE = os.environ.get("REGSUPERVISOR_TEST_NGINX_IMAGE", "nginx:1.28")


def engine_required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("REGSUPERVISOR_REQUIRE_ENGINE") == "1"


def unavailable(reason: str) -> None:
    if engine_required():
        pytest.fail(reason)
    pytest.skip(reason)


def connect_engine() -> docker.DockerClient:
    """The engine at DOCKER_HOST (or the default socket), with the stack's images present."""
    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as exc:
        unavailable(f"no Docker engine reachable ({exc}); run the tests through tests/run")
    for image in (REGISTRY_IMAGE, NGINX_IMAGE):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.fail(f"image {image} missing: run scripts/build-images (tests/run does)")
    return client
