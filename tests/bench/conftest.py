"""Fixtures for the benchmark's smoke tests: the engine, and pytest-docker set up for Debian's
docker-compose 1.29 (no `docker compose` plugin, no `up --wait`) with the post's stack."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

import docker
import pytest

from bench.stacks import COMPOSE_COMMAND, NGINX_IMAGE, REGISTRY_IMAGE, REPO, ComposeStack


def _engine_required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("REGSUPERVISOR_REQUIRE_ENGINE") == "1"


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        if _engine_required():
            pytest.fail(f"no Docker engine reachable ({exc}); run the tests through tests/run")
        pytest.skip(f"no Docker engine reachable: {exc}")
    for image in (REGISTRY_IMAGE, NGINX_IMAGE):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.fail(f"image {image} missing: run scripts/build-images (tests/run does)")
    if shutil.which(COMPOSE_COMMAND) is None or shutil.which("htpasswd") is None:
        subprocess.run([str(REPO / "bench" / "ensure-tools")], check=True, timeout=600)
    return client


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    return COMPOSE_COMMAND


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    return ["up -d"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -v"]


@pytest.fixture(scope="session")
def post_stack(engine, tmp_path_factory):
    """The post's directory (compose file, nginx config, certificate, user) made for this session."""
    stack = ComposeStack(engine, tmp_path_factory.mktemp("post"), f"benchtest{secrets.token_hex(3)}")
    yield stack
    stack.force_down()  # also when `up` failed, which pytest-docker does not clean up


@pytest.fixture(scope="session")
def docker_compose_file(post_stack) -> list[str]:
    return post_stack.files


@pytest.fixture(scope="session")
def docker_compose_project_name(post_stack) -> str:
    return post_stack.project
