"""Issue 2: the post's stack from config.toml, driven through the real engine and docker CLI."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

import docker
import pytest
import requests

PASSWORD = "correct horse battery"


def docker_cli(*args: str, config_dir: Path, stdin: str | None = None, check: bool = True):
    env = {**os.environ, "DOCKER_CONFIG": str(config_dir)}
    result = subprocess.run(
        ["docker", *args], input=stdin, capture_output=True, text=True, env=env, timeout=300
    )
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result


def make_test_image(client, tag: str) -> str:
    """A unique image (busybox + a random payload), imported locally: nothing is pulled."""
    payload = secrets.token_hex(16)
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        busybox = shutil.which("busybox") or "/bin/busybox"
        tar.add(busybox, arcname="bin/busybox")
        info = tarfile.TarInfo("payload")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload.encode()))
    client.api.import_image_from_data(
        data.getvalue(),
        repository=tag.rsplit(":", 1)[0],
        tag=tag.rsplit(":", 1)[1],
        changes=['CMD ["/bin/busybox", "cat", "/payload"]'],
    )
    return payload


def post_client_steps(client, registry: str, auth: tuple[str, str], config_dir: Path, local: str) -> None:
    """The post's client side: login, tag, push, remove, pull, and run what came back."""
    docker_cli("login", registry, "-u", auth[0], "--password-stdin", stdin=auth[1], config_dir=config_dir)
    image = f"{registry}/my-ubuntu:latest"
    payload = make_test_image(client, local)
    docker_cli("tag", local, image, config_dir=config_dir)
    docker_cli("push", image, config_dir=config_dir)
    docker_cli("rmi", local, image, config_dir=config_dir)
    docker_cli("pull", image, config_dir=config_dir)
    run = docker_cli("run", "--rm", image, config_dir=config_dir)
    assert run.stdout.strip() == payload
    docker_cli("rmi", image, config_dir=config_dir)


def test_post_walkthrough_with_docker_cli(stack, client, tmp_path):
    stack.add_user("iulian", PASSWORD)
    stack.start_daemon()
    registry = f"127.0.0.1:{stack.listen_port}"
    config_dir = tmp_path / "docker-config"

    # unauthenticated and wrong-password requests get nginx's 401 with the API version header
    anonymous = stack.get()
    assert anonymous.status_code == 401
    assert anonymous.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert 'realm="Registry"' in anonymous.headers["WWW-Authenticate"]
    assert stack.get(auth=("iulian", "wrong")).status_code == 401
    ok = stack.get(auth=("iulian", PASSWORD))
    assert ok.status_code == 200
    assert ok.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    # only one copy of the header when the registry itself sent it
    assert ok.raw.headers.getlist("Docker-Distribution-Api-Version") == ["registry/2.0"]
    # old docker clients are refused, other paths are 404
    assert stack.get(headers={"User-Agent": "docker/1.5.0 go/go1.4"}).status_code == 404
    assert stack.get("/").status_code == 404

    post_client_steps(
        client, registry, ("iulian", PASSWORD), config_dir, f"regsupervisor-test/my-ubuntu:{stack.name}"
    )

    # the catalog shows it through the proxy; the data is in data_dir on the host
    catalog = stack.get("/v2/_catalog", auth=("iulian", PASSWORD)).json()
    assert catalog["repositories"] == ["my-ubuntu"]
    assert (stack.state_dir / "data" / "docker" / "registry" / "v2" / "repositories" / "my-ubuntu").is_dir()


def test_users_change_without_restart(stack):
    stack.add_user("alice", "pw-alice")
    stack.start_daemon()
    started = stack.started_at("nginx")
    assert stack.get(auth=("bob", "pw-bob")).status_code == 401
    stack.add_user("bob", "pw-bob")
    assert stack.get(auth=("bob", "pw-bob")).status_code == 200
    stack.cli("user", "remove", "alice")
    assert stack.get(auth=("alice", "pw-alice")).status_code == 401
    assert stack.cli("user", "list").stdout.split() == ["bob"]
    assert stack.started_at("nginx") == started
    # a hand-edited file with a malformed line: reported with its line number, the rest served
    htpasswd = stack.state_dir / "nginx" / "htpasswd"
    htpasswd.write_text("this line is broken\n" + htpasswd.read_text())
    listed = stack.cli("user", "list")
    assert listed.stdout.split() == ["bob"] and "line 1: expected NAME:HASH" in listed.stderr
    assert stack.get(auth=("bob", "pw-bob")).status_code == 200


def test_rerun_adopts_without_restart_and_changes_recreate_only_nginx(stack, client):
    stack.add_user("u", "p")
    stack.start_daemon()
    before = {s: stack.started_at(s) for s in ("registry", "nginx")}
    registry_id = stack.container("registry")["Id"]
    # SIGKILL: the daemon dies without stopping anything, a new one adopts
    stack.stop_daemon(sig=9)
    stack.start_daemon()
    assert {s: stack.started_at(s) for s in ("registry", "nginx")} == before
    assert '"container adopted"' in stack.log()
    stack.stop_daemon(sig=9)

    # a changed listen port recreates nginx only
    from tests.integration.conftest import free_port

    stack.write_config(listen_port=free_port())
    stack.start_daemon()
    assert stack.container("registry")["Id"] == registry_id
    assert stack.started_at("registry") == before["registry"]
    assert stack.started_at("nginx") != before["nginx"]
    assert stack.serving(("u", "p"))


def test_stray_project_containers_are_removed(stack, client):
    stack.start_daemon()
    stack.stop_daemon(sig=9)
    stray = client.containers.create(
        "registry:2", name=f"{stack.name}-old", labels={"io.regsupervisor.project": stack.name}
    )
    stack.start_daemon()
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(stray.id)


def test_data_survives_down_and_run(stack, client):
    stack.add_user("u", "p")
    stack.start_daemon()
    blob = os.urandom(4096)
    digest = _push_blob(stack, ("u", "p"), "keep/me", blob)
    stack.stop_daemon()
    down = stack.cli("down")
    assert "removed 2 container(s)" in down.stdout
    assert not client.containers.list(all=True, filters={"label": f"io.regsupervisor.project={stack.name}"})
    stack.start_daemon()
    got = stack.get(f"/v2/keep/me/blobs/{digest}", auth=("u", "p"))
    assert got.status_code == 200 and got.content == blob


def _push_blob(stack, auth, repo: str, blob: bytes) -> str:
    import hashlib

    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    start = requests.post(f"{stack.url}/v2/{repo}/blobs/uploads/", auth=auth, verify=stack.ca, timeout=10)
    assert start.status_code == 202, start.text
    location = start.headers["Location"]
    sep = "&" if "?" in location else "?"
    put = requests.put(
        f"{location}{sep}digest={digest}",
        data=blob,
        auth=auth,
        verify=stack.ca,
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert put.status_code == 201, put.text
    return digest


def test_status_json(stack):
    stack.start_daemon()
    import json

    report = json.loads(stack.cli("status", "--json").stdout)
    registry, nginx = report["services"]["registry"], report["services"]["nginx"]
    assert registry["container"] == f"{stack.name}-registry" and registry["state"] == "running"
    assert nginx["ports"] == [f"127.0.0.1:{stack.listen_port}->443/tcp"]
    assert nginx["image"] == "nginx:1.28" and nginx["started_at"]
    assert report["daemon"]["running"] is True
    assert registry["supervision"] in ("starting", "running")
    table = stack.cli("status").stdout
    assert f"{stack.name}-nginx" in table


def test_port_in_use_is_one_clear_error(stack):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", stack.listen_port))
        busy.listen()
        stack.start_daemon(wait=False)
        code = stack.process.wait(120)
        stack.process = None
    assert code == 1
    errors = [line for line in stack.log().splitlines() if '"level": "error"' in line]
    assert len(errors) == 1 and f"127.0.0.1:{stack.listen_port} is already in use" in errors[0]
    assert "Traceback" not in stack.log()


def test_missing_image_that_cannot_be_pulled(stack):
    # a registry on a closed loopback port: the pull fails at once, nothing leaves the machine
    text = stack.config_path.read_text().replace('pull = "never"', 'pull = "missing"')
    text = text.replace('image = "registry:2"', 'image = "127.0.0.1:9/nothing/here:1"')
    stack.config_path.write_text(text)
    result = stack.cli("run", check=False)
    assert result.returncode == 1
    assert "cannot pull image '127.0.0.1:9/nothing/here:1'" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_engine_unreachable(stack, tmp_path):
    text = stack.config_path.read_text().replace(
        "[docker]\n", f'[docker]\nhost = "unix://{tmp_path}/no.sock"\n'
    )
    stack.config_path.write_text(text)
    result = stack.cli("status", check=False)
    assert result.returncode == 1
    assert f"cannot reach the Docker engine at unix://{tmp_path}/no.sock" in result.stderr
    assert "DOCKER_HOST" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_mismatched_tls_pair_refused_before_containers(stack, client, tmp_path):
    from supervisor import tls

    a = tls.ensure_generated(tmp_path / "a", "localhost")
    b = tls.ensure_generated(tmp_path / "b", "localhost")
    (tmp_path / "c.crt").write_bytes(a.cert_pem)
    (tmp_path / "c.key").write_bytes(b.key_pem)
    stack.write_config(f'[tls]\ncert = "{tmp_path}/c.crt"\nkey = "{tmp_path}/c.key"\n')
    result = stack.cli("run", check=False)
    assert result.returncode == 1
    assert "does not match the certificate" in result.stderr + result.stdout
    assert not client.containers.list(all=True, filters={"label": f"io.regsupervisor.project={stack.name}"})


def test_nginx_t_in_the_image(stack, client):
    stack.start_daemon()
    result = client.containers.get(f"{stack.name}-nginx").exec_run(["nginx", "-t"])
    assert result.exit_code == 0, result.output
    assert b"[warn]" not in result.output
