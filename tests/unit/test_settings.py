from pathlib import Path

import pytest

from supervisor.errors import ConfigError
from supervisor.settings import effective_settings, load_settings, parse_host_port

SHIPPED = Path(__file__).resolve().parents[2] / "config.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_shipped_config_is_the_defaults(tmp_path):
    shipped = load_settings(SHIPPED)
    empty = load_settings(write(tmp_path, ""))
    assert shipped.model_dump() == empty.model_dump()


def test_shipped_config_documents_every_key():
    text = SHIPPED.read_text()
    for key, _value in _flat(effective_settings(load_settings(SHIPPED))):
        section, _, leaf = key.rpartition(".")
        assert f"\n{leaf} = " in text, f"{key} is not documented in config.toml"
        if section:
            assert f"[{section}]" in text


def _flat(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_environment_overrides_file(tmp_path, monkeypatch):
    path = write(tmp_path, '[proxy]\nlisten = "127.0.0.1:6000"\nserver_name = "reg.example.com"\n')
    monkeypatch.setenv("REGSUPERVISOR_PROXY__LISTEN", "127.0.0.1:7000")
    monkeypatch.setenv("REGSUPERVISOR_NAME", "other")
    settings = load_settings(path)
    assert settings.proxy.listen == "127.0.0.1:7000"
    assert settings.proxy.server_name == "reg.example.com"  # untouched keys of the section stay
    assert settings.name == "other"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[proxy]\nserver_name = "a;b"\n', "proxy.server_name"),
        ('[proxy]\nserver_name = "a\\nreturn 200"\n', "proxy.server_name"),
        ("[auth]\nrealm = 'x\" ; auth_basic off; #'\n", "auth.realm"),
        ('[proxy]\nlisten = "127.0.0.1:70000"\n', "proxy.listen"),
        ('[proxy]\nlisten = "example.com:443"\n', "proxy.listen"),
        ('[registry]\npublish = "5000:5000:1"\n', "registry.publish"),
        ('[registry]\nimage = "registry:2; rm -rf /"\n', "registry.image"),
        ('[registry]\ndata_dir = "relative/path"\n', "registry.data_dir"),
        ('[docker]\npull = "sometimes"\n', "docker.pull"),
        ('[tls]\ncert = "/etc/cert.pem"\n', "tls"),
        ("[respawn]\nlimit = -1\n", "respawn.limit"),
        ("[health]\ninterval = 0\n", "health.interval"),
        ('[proxy]\nlisen = "1"\n', "proxy.lisen: unknown key"),
        ('name = "UPPER"\n', "name"),
        ('state_dir = ""\n', "state_dir"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_env_value_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("REGSUPERVISOR_HEALTH__FAILURES", "many")
    with pytest.raises(ConfigError, match=r"REGSUPERVISOR_HEALTH__FAILURES: health\.failures"):
        load_settings(write(tmp_path, ""))


def test_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "name = \n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")


def test_host_port_forms():
    assert str(parse_host_port("5443")) == "0.0.0.0:5443"
    assert str(parse_host_port("[::1]:5443")) == "[::1]:5443"
    assert parse_host_port("127.0.0.1:5000").is_loopback
    assert not parse_host_port("0.0.0.0:5000").is_loopback
