from pathlib import Path

from supervisor.const import LABEL_CONFIG_HASH, LABEL_PROJECT, LABEL_SERVICE
from supervisor.engine import Container
from supervisor.reconcile import Verb, plan
from supervisor.settings import load_settings
from supervisor.specs import desired_stack


def settings_from(tmp_path: Path, text: str = ""):
    path = tmp_path / "config.toml"
    path.write_text(f'state_dir = "{tmp_path}/state"\n' + text)
    return load_settings(path)


def fake_container(spec, running=True, config_hash=None, name=None):
    return Container(
        {
            "Id": (name or spec.name) + "-id",
            "Name": "/" + (name or spec.name),
            "Config": {
                "Labels": {
                    LABEL_PROJECT: spec.project,
                    LABEL_SERVICE: spec.service,
                    LABEL_CONFIG_HASH: config_hash or spec.config_hash,
                },
                "Image": spec.image,
            },
            "State": {"Status": "running" if running else "exited", "Running": running},
        }
    )


def test_stack_shape(tmp_path):
    stack = desired_stack(settings_from(tmp_path, '[registry]\npublish = "127.0.0.1:5000"\n'), "s3")
    registry, nginx = stack.containers
    assert (registry.name, nginx.name, stack.network) == (
        "regsupervisor-registry",
        "regsupervisor-nginx",
        "regsupervisor",
    )
    assert registry.aliases == ("registry",)
    assert registry.port_bindings == {"5000/tcp": ("127.0.0.1", 5000)}
    assert nginx.port_bindings == {"443/tcp": ("0.0.0.0", 5443)}
    assert ("REGISTRY_HTTP_SECRET", "s3") in registry.environment
    assert registry.mounts[0].source == f"{tmp_path}/state/data"
    assert nginx.mounts[0].read_only and nginx.mounts[0].target == "/etc/nginx/conf.d"


def test_changes_touch_only_the_affected_service(tmp_path):
    base = desired_stack(settings_from(tmp_path), "s")
    listen = desired_stack(settings_from(tmp_path, '[proxy]\nlisten = "127.0.0.1:6443"\n'), "s")
    assert base.containers[0].config_hash == listen.containers[0].config_hash
    assert base.containers[1].config_hash != listen.containers[1].config_hash
    # realm and server_name live in nginx's files (reloaded), not in the container
    realm = desired_stack(settings_from(tmp_path, '[auth]\nrealm = "Other"\n'), "s")
    assert realm == base


def test_plan(tmp_path):
    stack = desired_stack(settings_from(tmp_path), "s")
    registry, nginx = stack.containers
    assert [a.verb for a in plan(stack, [])] == [Verb.CREATE, Verb.CREATE]
    running = [fake_container(registry), fake_container(nginx)]
    assert [a.verb for a in plan(stack, running)] == [Verb.ADOPT, Verb.ADOPT]
    changed = [fake_container(registry, running=False), fake_container(nginx, config_hash="old")]
    assert [a.verb for a in plan(stack, changed)] == [Verb.START, Verb.RECREATE]
    stray = [*running, fake_container(nginx, name="regsupervisor-old")]
    actions = plan(stack, stray)
    assert actions[0].verb is Verb.REMOVE and actions[0].container.name == "regsupervisor-old"
