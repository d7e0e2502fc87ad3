"""Issue 7: the same config with mode = "swarm" on a one-node swarm, storage in an S3 emulator.

The swarm is created here (`docker swarm init --advertise-addr 127.0.0.1`) and left at the end;
moto serves S3 from a container on the project's overlay network (its alias "s3").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import requests

from supervisor.const import LABEL_PROJECT, LABEL_SWARM_PROJECT
from supervisor.swarm import Swarm
from tests.engine import NGINX_IMAGE, REGISTRY_IMAGE
from tests.integration import registry_client
from tests.integration.conftest import REPO, Stack, free_port
from tests.integration.test_foundation import post_client_steps

AUTH = ("ops", "swarm-pass-1")
S3_KEYS = ("AKIDREGSUPERVISORTEST", "s3-secret-never-logged-7f3a")
MOTO_VENV = Path(os.environ.get("REGSUPERVISOR_TEST_MOTO_VENV", REPO / ".venv-moto"))
PYTHON_IMAGE = os.environ.get("REGSUPERVISOR_TEST_PYTHON_IMAGE", "regsupervisor-test/systemd:bookworm")
BUCKET = "registry-blobs"


@pytest.fixture(scope="module")
def swarm(client):
    """A one-node swarm for this module: created if the engine is in none, and left afterwards."""
    state = client.info()["Swarm"]["LocalNodeState"]
    if state == "active" and not client.info()["Swarm"].get("ControlAvailable"):
        pytest.fail("the engine is a swarm worker: the tests need a manager")
    created = state != "active"
    if created:
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    if not (MOTO_VENV / "bin" / "python").exists():
        pytest.fail(f"no moto venv at {MOTO_VENV}: tests/run makes it")
    subprocess.run([str(REPO / "scripts" / "build-systemd-image")], check=True, timeout=900)
    yield client
    if created:
        client.swarm.leave(force=True)
        assert client.info()["Swarm"]["LocalNodeState"] == "inactive"


@dataclass
class SwarmStack(Stack):
    credentials_secret: str = ""  # an existing swarm secret instead of key files

    def write_config(
        self, extra: str | None = None, listen_port: int | None = None, mode: str = "swarm"
    ) -> None:
        if extra is not None:
            self.extra_config = extra
        keys = self.root / "s3"
        keys.mkdir(mode=0o700, exist_ok=True)
        (keys / "access_key").write_text(S3_KEYS[0] + "\n")
        (keys / "secret_key").write_text(S3_KEYS[1] + "\n")
        storage = (
            f'[registry.storage]\ndriver = "s3"\nbucket = "{BUCKET}"\nendpoint = "http://s3:5000"\n'
            f'path_style = true\naccess_key_file = "{keys}/access_key"\nsecret_key_file = "{keys}/secret_key"\n'
            if mode == "swarm" and not self.credentials_secret
            else f'[registry.storage]\ndriver = "s3"\nbucket = "{BUCKET}"\nendpoint = "http://s3:5000"\n'
            f'path_style = true\ncredentials_secret = "{self.credentials_secret}"\n'
            if mode == "swarm"
            else ""
        )
        self.config_path.write_text(
            f'name = "{self.name}"\nmode = "{mode}"\n'
            f'state_dir = "{self.state_dir}"\n'
            '[docker]\npull = "never"\n'
            f'[registry]\nimage = "{REGISTRY_IMAGE}"\n'
            # swarm publishes on every address of the node; standalone keeps to loopback
            f'[proxy]\nimage = "{NGINX_IMAGE}"\n'
            f'listen = "{"0.0.0.0" if mode == "swarm" else "127.0.0.1"}:{self.listen_port}"\n'
            "[health]\ninterval = 1.0\ntimeout = 2.0\nfailures = 3\nstart_period = 5.0\n"
            + storage
            + self.extra_config
        )

    @property
    def network(self) -> str:
        return f"{self.name}-swarm"

    @property
    def s3_container(self) -> str:
        return f"{self.name}-s3"

    def start_s3(self, timeout: float = 60) -> None:
        """moto on the project's overlay network, once the daemon made it; then the bucket."""
        deadline = time.monotonic() + timeout
        while not self.client.networks.list(names=[self.network]):
            assert time.monotonic() < deadline, (
                f"network {self.network} never appeared:\n{self.log()[-2000:]}"
            )
            time.sleep(0.2)
        venv, api = str(MOTO_VENV), self.client.api
        api.create_container(
            PYTHON_IMAGE,
            [f"{venv}/bin/python", "-m", "moto.server", "-H", "0.0.0.0", "-p", "5000"],
            name=self.s3_container,
            host_config=api.create_host_config(binds=[f"{venv}:{venv}:ro"], network_mode=self.network),
            networking_config=api.create_networking_config(
                {self.network: api.create_endpoint_config(aliases=["s3"])}
            ),
        )
        api.start(self.s3_container)
        while True:
            result = self.s3_python(
                f"import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:5000/{BUCKET}', method='PUT'))"
            )
            if result.exit_code == 0:
                return
            assert time.monotonic() < deadline, result.output.decode()
            time.sleep(0.3)

    def s3_python(self, code: str):
        return self.client.containers.get(self.s3_container).exec_run([f"{MOTO_VENV}/bin/python", "-c", code])

    def bucket_keys(self, prefix: str) -> list[str]:
        result = self.s3_python(
            "import urllib.request as u, re; "
            f"body = u.urlopen('http://127.0.0.1:5000/{BUCKET}?list-type=2&prefix={prefix}').read().decode(); "
            "print('\\n'.join(re.findall('<Key>([^<]+)</Key>', body)))"
        )
        assert result.exit_code == 0, result.output
        return result.output.decode().split()

    def services(self) -> list:
        return self.client.services.list(filters={"label": f"{LABEL_PROJECT}={self.name}"})

    def service(self, service: str):
        return self.client.services.get(f"{self.name}-{service}")

    def running_tasks(self, service: str) -> list[dict]:
        try:
            tasks = self.service(service).tasks()
        except docker.errors.NotFound:
            return []
        return [t for t in tasks if t["Status"]["State"] == "running" and t["DesiredState"] == "running"]

    def registry_containers(self) -> list:
        return self.client.containers.list(
            filters={"label": [f"{LABEL_SWARM_PROJECT}={self.name}", "io.regsupervisor.service=registry"]}
        )

    def wait_for(self, what: str, check, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode}:\n{self.log()[-3000:]}")
            assert time.monotonic() < deadline, f"{what}: not after {timeout}s\n{self.log()[-3000:]}"
            time.sleep(0.3)

    def events(self, name: str) -> list[dict]:
        return [e for e in map(json.loads, self.log().splitlines()) if e.get("event") == name]

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(docker.errors.NotFound):
            self.client.containers.get(self.s3_container).remove(force=True)
        if self.client.info()["Swarm"].get("ControlAvailable"):
            Swarm(self.client, self.name).remove_all(self.network)
        super().cleanup()


@pytest.fixture
def swarm_stack(swarm, tmp_path):
    stack = SwarmStack(swarm, tmp_path / "swarm", f"rs{secrets.token_hex(4)}", free_port())
    stack.add_user(*AUTH)
    stack.start_daemon(wait=False)
    stack.start_s3()
    stack.wait_serving(AUTH, timeout=120)
    stack.wait_for("both registry replicas running", lambda: len(stack.running_tasks("registry")) == 2)
    yield stack
    stack.cleanup()


def session(stack: SwarmStack) -> requests.Session:
    return registry_client.session_for(AUTH, stack.ca)


def exec_in(container, command: str) -> str:
    result = container.exec_run(["/bin/sh", "-c", command])
    assert result.exit_code == 0, (command, result.output.decode())
    return result.output.decode()


def test_post_walkthrough_through_the_swarm_stack(swarm_stack, client, tmp_path):
    stack = swarm_stack
    registry = f"127.0.0.1:{stack.listen_port}"
    config_dir = tmp_path / "docker-config"
    post_client_steps(client, registry, AUTH, config_dir, f"regsupervisor-test/my-ubuntu:{stack.name}")

    assert stack.get("/v2/_catalog", auth=AUTH).json()["repositories"] == ["my-ubuntu"]
    assert stack.bucket_keys("docker/registry/v2/repositories/my-ubuntu/")

    # what the swarm runs: a replicated registry on dnsrr, a global nginx publishing in host mode
    registry_spec = stack.service("registry").attrs["Spec"]
    nginx_spec = stack.service("nginx").attrs["Spec"]
    assert registry_spec["Mode"]["Replicated"]["Replicas"] == 2
    assert registry_spec["EndpointSpec"]["Mode"] == "dnsrr"
    assert "Global" in nginx_spec["Mode"]
    assert nginx_spec["EndpointSpec"]["Ports"][0]["PublishMode"] == "host"
    for spec in (registry_spec, nginx_spec):
        restart = spec["TaskTemplate"]["RestartPolicy"]
        assert (restart["MaxAttempts"], restart["Window"]) == (10, 5_000_000_000)  # respawn limit 10 5
        assert spec["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Test"][0] == "CMD-SHELL"
        assert (
            spec["UpdateConfig"]["Parallelism"] == 1 and spec["UpdateConfig"]["FailureAction"] == "rollback"
        )
    assert registry_spec["UpdateConfig"]["Order"] == "start-first"

    # status: replicas per service and per node
    report = json.loads(stack.cli("status", "--json").stdout)
    assert report["mode"] == "swarm" and report["daemon"]["running"]
    assert (report["services"]["registry"]["running"], report["services"]["registry"]["desired"]) == (2, 2)
    assert sum(report["services"]["registry"]["nodes"].values()) == 2
    assert report["services"]["nginx"]["running"] == 1
    table = stack.cli("status").stdout
    assert "2/2" in table and "swarm mode" in table

    # no credential or secret in what the swarm shows, the journal or status
    shown = json.dumps([s.attrs for s in stack.services()]) + stack.log() + json.dumps(report)
    http_secret = (stack.state_dir / "http_secret").read_text().strip()
    for secret in (*S3_KEYS, http_secret, AUTH[1]):
        assert secret not in shown


def test_a_push_spreads_over_replicas_and_every_replica_serves_it(swarm_stack):
    stack = swarm_stack
    with session(stack) as s:
        layers = [os.urandom(256 * 1024) for _ in range(6)]
        for i, layer in enumerate(layers):
            registry_client.push_image(s, stack.url, "spread", tag=f"v{i}", layer=layer)
        digests = {f"v{i}": registry_client.pull_image(s, stack.url, "spread", tag=f"v{i}") for i in range(6)}

    replicas = stack.registry_containers()
    assert len(replicas) == 2
    uploads = {
        c.name: sum(
            1
            for line in c.logs().decode().splitlines()
            if "response completed" in line and "method=PUT" in line and "/blobs/uploads/" in line
        )
        for c in replicas
    }
    assert all(count > 0 for count in uploads.values()), uploads  # both replicas took uploads
    # every replica serves every manifest and blob (from the shared bucket) with the same digest
    accept = "Accept: application/vnd.docker.distribution.manifest.v2+json"
    for replica in replicas:
        for tag, digest in digests.items():
            url = f"http://127.0.0.1:5000/v2/spread/manifests/{tag}"
            assert (
                exec_in(replica, f"wget -q -O- --header '{accept}' {url} | sha256sum").split()[0]
                == digest[7:]
            )
        for layer in layers:
            digest = hashlib.sha256(layer).hexdigest()
            url = f"http://127.0.0.1:5000/v2/spread/blobs/sha256:{digest}"
            assert exec_in(replica, f"wget -q -O- {url} | sha256sum").split()[0] == digest


def _serving_replica(stack: SwarmStack):
    """The registry task with a proxied connection open (the health checks use 127.0.0.1)."""
    for replica in stack.registry_containers():
        connections = exec_in(replica, "netstat -tn 2>/dev/null || true")
        if any(
            ":5000 " in line and "ESTABLISHED" in line and "127.0.0.1" not in line
            for line in connections.splitlines()
        ):
            return replica
    return None


def test_replica_killed_mid_pull_is_replaced_and_the_retry_succeeds(swarm_stack, client):
    stack = swarm_stack
    layer = os.urandom(48 * 1024 * 1024)
    expected = hashlib.sha256(layer).hexdigest()
    with session(stack) as s:
        registry_client.push_image(s, stack.url, "big", layer=layer)
        before = {t["ID"] for t in stack.running_tasks("registry")}
        blob_url = f"{stack.url}/v2/big/blobs/sha256:{expected}"
        response = s.get(blob_url, stream=True, timeout=60)
        assert response.status_code == 200
        chunks = response.iter_content(64 * 1024)
        received = [next(chunks)]
        victim = None
        deadline = time.monotonic() + 20
        while victim is None and time.monotonic() < deadline:
            victim = _serving_replica(stack)
        assert victim is not None, "no replica was serving the pull"
        pid = int(client.api.inspect_container(victim.id)["State"]["Pid"])
        assert pid > 1
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(requests.RequestException):
            received.extend(chunks)
        first_try = hashlib.sha256(b"".join(received)).hexdigest()
        assert first_try != expected, "the pull finished before the replica died"

        # the client retries through the proxy: the other replica serves the whole blob
        for _attempt in range(5):
            try:
                retry = s.get(blob_url, timeout=120)
                if retry.status_code == 200 and hashlib.sha256(retry.content).hexdigest() == expected:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the retried pull never succeeded")

    stack.wait_for(
        "swarm replaced the killed task",
        lambda: (
            len(stack.running_tasks("registry")) == 2
            and {t["ID"] for t in stack.running_tasks("registry")} != before
        ),
    )
    stack.wait_for(
        "the daemon reported it", lambda: any(e["service"] == "registry" for e in stack.events("task died"))
    )


def test_rolling_image_update_with_continuous_pulls_and_no_failure(swarm_stack, client):
    stack = swarm_stack
    client.images.get(REGISTRY_IMAGE).tag("regsupervisor-test/registry", "rolling")
    with session(stack) as s:
        registry_client.push_image(s, stack.url, "steady", layer=os.urandom(2 * 1024 * 1024))
    outcomes: list[str] = []
    stop = threading.Event()

    def pull_continuously() -> None:
        with session(stack) as s:
            while not stop.is_set():
                try:
                    registry_client.pull_image(s, stack.url, "steady")
                    outcomes.append("ok")
                except (AssertionError, requests.RequestException) as exc:
                    outcomes.append(f"failed: {exc}")

    pullers = [threading.Thread(target=pull_continuously) for _ in range(2)]
    for puller in pullers:
        puller.start()
    try:
        time.sleep(2)
        stack.config_path.write_text(
            stack.config_path.read_text().replace(
                f'image = "{REGISTRY_IMAGE}"', 'image = "regsupervisor-test/registry:rolling"'
            )
        )
        stack.process.send_signal(signal.SIGHUP)

        def rolled_out() -> bool:
            service = stack.service("registry")
            tasks = stack.running_tasks("registry")
            return (
                (service.attrs.get("UpdateStatus") or {}).get("State") == "completed"
                and len(tasks) == 2
                and all(
                    t["Spec"]["ContainerSpec"]["Image"].startswith("regsupervisor-test/registry:rolling")
                    for t in tasks
                )
            )

        stack.wait_for("the update rolled out", rolled_out, timeout=180)
        time.sleep(3)
    finally:
        stop.set()
        for puller in pullers:
            puller.join(60)
    failures = [o for o in outcomes if o != "ok"]
    assert not failures, f"{len(failures)} of {len(outcomes)} pulls failed: {failures[:3]}"
    assert len(outcomes) > 20
    assert any(e["service"] == "registry" for e in stack.events("service updated"))


def test_drift_is_restored(swarm_stack):
    stack = swarm_stack
    stack.service("registry").scale(1)
    stack.wait_for(
        "replicas restored",
        lambda: stack.service("registry").attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 2,
        timeout=30,
    )
    stack.service("nginx").remove()
    stack.wait_for("nginx recreated", lambda: len(stack.running_tasks("nginx")) == 1, timeout=60)
    stack.wait_serving(AUTH, timeout=60)
    assert stack.events("service drifted from the config, restored")
    assert sum(e["service"] == "nginx" for e in stack.events("service created")) == 2


@pytest.fixture
def exiting_image(client):
    """The registry image with a config path that does not exist: it exits 1 at once."""
    image = f"regsupervisor-test/exits:{secrets.token_hex(3)}"
    helper = client.containers.create(REGISTRY_IMAGE, command=["/etc/docker/registry/missing.yml"])
    try:
        helper.commit(repository=image.split(":")[0], tag=image.split(":")[1])
    finally:
        helper.remove()
    yield image
    with contextlib.suppress(docker.errors.APIError):
        client.images.remove(image, force=True)


def test_a_service_that_cannot_converge_stops_the_daemon(swarm, tmp_path, exiting_image):
    image = exiting_image
    stack = SwarmStack(swarm, tmp_path / "crash", f"rs{secrets.token_hex(4)}", free_port())
    try:
        stack.write_config("[respawn]\nlimit = 3\ninterval = 60\n")
        stack.config_path.write_text(
            stack.config_path.read_text().replace(f'image = "{REGISTRY_IMAGE}"', f'image = "{image}"')
        )
        stack.start_daemon(wait=False)
        code = stack.process.wait(120)
        stack.process = None
        assert code == 3, stack.log()[-2000:]
        gave_up = stack.events("registry cannot converge, stopped")
        assert len(gave_up) == 1 and "respawning too fast" in gave_up[0]["problem"]
        assert len(stack.events("task died")) >= 4
    finally:
        stack.cleanup()


def test_an_update_swarm_rolls_back_stops_the_daemon(swarm_stack, exiting_image):
    """A new registry image that cannot start: swarm rolls the update back, the old tasks keep
    serving, and the daemon exits 3 instead of sending the same update again."""
    stack, image = swarm_stack, exiting_image
    # a high respawn limit: the rollback, not the crash rate, is what must stop it
    stack.config_path.write_text(
        stack.config_path.read_text().replace(f'image = "{REGISTRY_IMAGE}"', f'image = "{image}"')
        + "[respawn]\nlimit = 100\ninterval = 5\n"
    )
    stack.process.send_signal(signal.SIGHUP)
    code = stack.process.wait(180)
    stack.process = None
    assert code == 3, stack.log()[-3000:]
    gave_up = stack.events("registry cannot converge, stopped")
    assert len(gave_up) == 1 and "update rolled back by swarm" in gave_up[0]["problem"], gave_up
    # sent once, not again after the rollback
    assert sum(e["service"] == "registry" for e in stack.events("service updated")) == 1
    # the rolled-back service still runs the old image and serves
    assert (
        stack.service("registry")
        .attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        .startswith(REGISTRY_IMAGE)
    )
    stack.wait_for("old tasks serving", lambda: len(stack.running_tasks("registry")) == 2)
    assert stack.serving(AUTH)


def test_credentials_from_an_existing_swarm_secret(swarm, tmp_path, client):
    """Without credentials the registry's S3 client cannot sign a request: a push proves it read them."""
    name = f"rs{secrets.token_hex(4)}"
    secret = client.secrets.create(
        name=f"{name}-aws",
        data=f"[default]\naws_access_key_id = {S3_KEYS[0]}\naws_secret_access_key = {S3_KEYS[1]}\n".encode(),
    )
    stack = SwarmStack(swarm, tmp_path / "creds", name, free_port(), credentials_secret=f"{name}-aws")
    try:
        assert "access_key_file" not in stack.config_path.read_text()
        stack.add_user(*AUTH)
        stack.start_daemon(wait=False)
        stack.start_s3()
        stack.wait_serving(AUTH, timeout=120)
        with session(stack) as s:
            digest = registry_client.push_image(s, stack.url, "via-secret")
            assert registry_client.pull_image(s, stack.url, "via-secret") == digest
        assert stack.bucket_keys("docker/registry/v2/repositories/via-secret/")
    finally:
        stack.cleanup()
        secret.remove()


def test_switching_back_to_standalone_removes_the_services(swarm_stack, client):
    stack = swarm_stack
    assert stack.stop_daemon() == 0
    assert len(stack.running_tasks("registry")) == 2  # the swarm keeps serving without the daemon
    client.containers.get(stack.s3_container).remove(force=True)
    stack.write_config(mode="standalone")
    stack.start_daemon()
    assert stack.serving(AUTH)
    assert not stack.services()
    assert not client.configs.list(filters={"label": f"{LABEL_PROJECT}={stack.name}"})
    assert not client.secrets.list(filters={"label": f"{LABEL_PROJECT}={stack.name}"})
    assert not client.networks.list(names=[stack.network])
    assert stack.events("swarm services removed: mode is standalone")
    assert {c.name for c in client.containers.list(filters={"label": f"{LABEL_PROJECT}={stack.name}"})} == {
        f"{stack.name}-registry",
        f"{stack.name}-nginx",
    }
