"""Swarm mode's pure core: settings → services, files, restart policy; plan and drift; counts."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from supervisor.const import LABEL_CONFIG_HASH, LABEL_SERVICE
from supervisor.errors import ConfigError
from supervisor.settings import load_settings
from supervisor.swarm import Service, Task, replica_counts
from supervisor.swarm_reconcile import Verb, drift, plan
from supervisor.swarm_specs import NginxFiles, StorageCredentials, desired_swarm

S3 = '[registry.storage]\ndriver = "s3"\nbucket = "blobs"\nendpoint = "http://s3:5000"\npath_style = true\n'
NGINX = NginxFiles(conf=b"server {}", cert=b"CERT", key=b"KEY", htpasswd=b"ops:$2y$05$x\n")
KEYS = StorageCredentials("AKID", "very-secret")


def settings_from(tmp_path: Path, text: str = S3, mode: str = "swarm"):
    path = tmp_path / "config.toml"
    path.write_text(f'mode = "{mode}"\nstate_dir = "{tmp_path}/state"\n' + text)
    return load_settings(path)


def swarm_stack(tmp_path, text: str = S3, nginx: NginxFiles = NGINX, keys: StorageCredentials = KEYS):
    return desired_swarm(settings_from(tmp_path, text), "http-secret", nginx, keys)


def actual_spec(spec, **changes):
    """A service spec as the engine returns it, for the fields drift() reads."""
    body = {
        "Name": spec.name,
        "Labels": spec.labels,
        "Mode": {"Global": {}} if spec.replicas is None else {"Replicated": {"Replicas": spec.replicas}},
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": spec.image + "@sha256:" + "0" * 64,
                "Env": [f"{k}={v}" for k, v in spec.environment],
                "Healthcheck": {"Test": list(spec.health.command)},
                "Configs": [{"ConfigName": f.name} for f in spec.files if not f.secret],
                "Secrets": [{"SecretName": f.name} for f in spec.files if f.secret],
            }
        },
        "EndpointSpec": {
            "Ports": [{"PublishedPort": p, "TargetPort": t, "PublishMode": "host"} for p, t in spec.published]
        },
    }
    body.update(changes)
    return body


def test_services_mirror_the_posts_stack_and_upstarts_limits(tmp_path):
    stack = swarm_stack(tmp_path, S3 + "[respawn]\nlimit = 10\ninterval = 5\n")
    registry, nginx = stack.services
    assert (registry.name, nginx.name, stack.network) == (
        "regsupervisor-registry",
        "regsupervisor-nginx",
        "regsupervisor-swarm",
    )
    assert registry.replicas == 2 and registry.endpoint_mode == "dnsrr" and registry.aliases == ("registry",)
    assert nginx.replicas is None and nginx.published == ((5443, 443),)
    for service in (registry, nginx):
        assert (service.restart.max_attempts, service.restart.window) == (10, 5.0)
        assert service.health.command[0] == "CMD-SHELL"
    assert (registry.update_order, nginx.update_order) == ("start-first", "stop-first")
    assert "127.0.0.1:8080/nginx-health" in nginx.health.command[1]


def test_the_registry_config_is_a_secret_with_the_shared_http_secret_and_no_redirects(tmp_path):
    registry = swarm_stack(tmp_path).by_service("registry")
    (config,) = registry.files
    assert config.secret and config.target == "/etc/docker/registry/config.yml" and config.mode == 0o400
    parsed = json.loads(config.data)
    assert parsed["http"]["secret"] == "http-secret"
    s3 = parsed["storage"]["s3"]
    assert s3 == {
        "bucket": "blobs",
        "region": "us-east-1",
        "regionendpoint": "http://s3:5000",
        "secure": False,
        "forcepathstyle": True,
        "accesskey": "AKID",
        "secretkey": "very-secret",
    }
    assert parsed["storage"]["redirect"] == {"disable": True}
    # credentials only in the secret: not in the environment, the labels or the file names
    visible = json.dumps([registry.environment, registry.labels, [f.name for f in registry.files]])
    assert "very-secret" not in visible and "http-secret" not in visible


@pytest.mark.parametrize(("limit", "interval", "attempts"), [(10, 5, 10), (0, 5, 0), (10, 0, 0)])
def test_upstarts_unlimited_respawn_is_no_max_attempts(tmp_path, limit, interval, attempts):
    stack = swarm_stack(tmp_path, S3 + f"[respawn]\nlimit = {limit}\ninterval = {interval}\n")
    assert stack.by_service("registry").restart.max_attempts == attempts


def test_an_existing_swarm_secret_can_hold_the_credentials(tmp_path):
    text = S3 + 'credentials_secret = "aws-creds"\n'
    registry = swarm_stack(tmp_path, text, keys=StorageCredentials()).by_service("registry")
    assert registry.external_secrets == (("aws-creds", "/run/secrets/aws-credentials"),)
    assert ("AWS_SHARED_CREDENTIALS_FILE", "/run/secrets/aws-credentials") in registry.environment
    assert "accesskey" not in json.loads(registry.files[0].data)["storage"]["s3"]


def test_changed_content_gets_a_new_name_and_a_new_hash(tmp_path):
    before = swarm_stack(tmp_path).by_service("nginx")
    after = swarm_stack(tmp_path, nginx=replace(NGINX, htpasswd=b"ops:x\nbob:y\n")).by_service("nginx")
    names = lambda spec: {f.role: f.name for f in spec.files}  # noqa: E731
    assert names(before)["htpasswd"] != names(after)["htpasswd"]
    assert names(before)["nginx-conf"] == names(after)["nginx-conf"]
    assert before.config_hash != after.config_hash
    # swarm refuses an empty secret: no users yet is a comment line nginx skips
    empty = swarm_stack(tmp_path, nginx=replace(NGINX, htpasswd=b"")).by_service("nginx")
    assert next(f for f in empty.files if f.role == "htpasswd").data.startswith(b"#")


def test_plan_creates_keeps_updates_and_removes(tmp_path):
    stack = swarm_stack(tmp_path)
    registry, nginx = stack.services
    assert [a.verb for a in plan(stack, [])] == [Verb.CREATE, Verb.CREATE]
    same = [
        Service({"ID": "r", "Spec": actual_spec(registry)}),
        Service({"ID": "n", "Spec": actual_spec(nginx)}),
    ]
    assert [a.verb for a in plan(stack, same)] == [Verb.KEEP, Verb.KEEP]
    stray = Service({"ID": "x", "Spec": {**actual_spec(registry), "Name": "regsupervisor-old"}})
    assert next(a.verb for a in plan(stack, [*same, stray])) is Verb.REMOVE


def test_drift_names_what_was_edited_by_hand(tmp_path):
    registry = swarm_stack(tmp_path).by_service("registry")
    assert drift(registry, actual_spec(registry)) == []
    assert drift(registry, actual_spec(registry, Mode={"Replicated": {"Replicas": 1}})) == ["replicas"]
    edited = actual_spec(registry)
    edited["TaskTemplate"]["ContainerSpec"]["Image"] = "registry:2.7"
    assert drift(registry, edited) == ["image"]
    edited = actual_spec(registry)
    edited["TaskTemplate"]["ContainerSpec"]["Env"] = ["REGISTRY_STORAGE_DELETE_ENABLED=true"]
    assert drift(registry, edited) == ["env"]
    pinned = replace(registry, image="registry:2@sha256:" + "1" * 64)
    assert drift(pinned, actual_spec(registry, Labels=pinned.labels)) == []  # no update loop
    relabelled = actual_spec(registry, Labels={**registry.labels, LABEL_CONFIG_HASH: "old"})
    assert drift(registry, relabelled) == ["config"]
    assert drift(
        registry, actual_spec(registry, EndpointSpec={"Ports": [{"PublishedPort": 5000, "TargetPort": 5000}]})
    ) == ["ports"]


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        ("", "swarm", "registry.storage.driver: swarm mode needs storage every replica shares"),
        (S3, "standalone", "registry.storage.driver: s3 storage is used in swarm mode only"),
        ('[registry.storage]\ndriver = "s3"\n', "swarm", "registry.storage: bucket: required"),
        (S3.replace("blobs", "Bad_Bucket"), "swarm", "registry.storage.bucket: 'Bad_Bucket' is not a valid"),
        (S3.replace("http://s3:5000", "s3:5000"), "swarm", "registry.storage.endpoint"),
        (S3 + 'access_key_file = "/etc/k"\n', "swarm", "set both or neither"),
        (
            '[registry]\npublish = "127.0.0.1:5000"\n' + S3,
            "swarm",
            "registry.publish: not available in swarm mode",
        ),
        ("[registry]\nreplicas = 0\n" + S3, "swarm", "registry.replicas"),
    ],
)
def test_bad_swarm_settings_are_one_line_naming_the_key(tmp_path, text, mode, message):
    with pytest.raises(ConfigError) as caught:
        settings_from(tmp_path, text, mode)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_replica_counts_per_service_and_node():
    registry = Service(
        {
            "ID": "r",
            "Spec": {
                "Labels": {LABEL_SERVICE: "registry"},
                "Name": "p-registry",
                "Mode": {"Replicated": {"Replicas": 2}},
            },
        }
    )
    nginx = Service(
        {
            "ID": "n",
            "Spec": {"Labels": {LABEL_SERVICE: "nginx"}, "Name": "p-nginx", "Mode": {"Global": {}}},
            "UpdateStatus": {"State": "completed"},
        }
    )

    def task(service, node, state, desired="running"):
        return Task(
            {
                "ID": f"{service}{node}{state}",
                "ServiceID": service,
                "NodeID": node,
                "DesiredState": desired,
                "Status": {"State": state},
            }
        )

    tasks = [
        task("r", "n1", "running"),
        task("r", "n2", "starting"),
        task("r", "n2", "failed", desired="shutdown"),
        task("n", "n1", "running"),
        task("n", "n2", "running"),
    ]
    counts = replica_counts([registry, nginx], tasks, {"n1": "alpha", "n2": "beta"})
    assert counts["registry"] | {} == {
        "swarm_service": "p-registry",
        "desired": 2,
        "running": 1,
        "starting": 1,
        "nodes": {"alpha": 1},
        "update": None,
    }
    assert (counts["nginx"]["running"], counts["nginx"]["desired"], counts["nginx"]["update"]) == (
        2,
        2,
        "completed",
    )
    assert counts["nginx"]["nodes"] == {"alpha": 1, "beta": 1}
