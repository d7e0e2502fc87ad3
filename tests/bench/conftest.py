"""Fixtures for the benchmark's smoke tests: the engine, and pytest-docker set up for Debian's
docker-compose 1.29 (no `docker compose` plugin, no `up --wait`) with the post's stack."""

from __future__ import annotations

import secrets
import shutil
import subprocess

import docker
import pytest

from bench.stacks import COMPOSE_COMMAND, REPO, ComposeStack


@pytest.fixture(scope="session")
def engine(docker_engine) -> docker.DockerClient:
    if shutil.which(COMPOSE_COMMAND) is None or shutil.which("htpasswd") is None:
        subprocess.run([str(REPO / "bench" / "ensure-tools")], check=True, timeout=600)
    return docker_engine


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
