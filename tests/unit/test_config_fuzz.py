"""Hostile config input: every document either loads or fails with one line and exit 2."""

import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.errors import ConfigError
from supervisor.nginx_conf import ProxyConfig, render
from supervisor.settings import load_settings

KEYS = {
    "": ["name", "state_dir", "stop_on_exit"],
    "docker": ["host", "pull"],
    "registry": ["image", "data_dir", "publish", "memory"],
    "proxy": ["image", "listen", "server_name", "memory"],
    "tls": ["cert", "key"],
    "auth": ["realm"],
    "respawn": ["limit", "interval", "delay", "max_delay", "reset_after"],
    "health": ["interval", "timeout", "failures", "start_period"],
}
NASTY = st.sampled_from(['"', "'", ";", "{", "}", "\n", "\\", "$", "#", " ", "\x00", "\x7f", "é", "[", "="])
values = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=8), NASTY, st.text(max_size=8)),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(value), repr(value))
    return repr(value) if not isinstance(value, list) else "[" + ", ".join(map(str, value)) + "]"


@st.composite
def documents(draw) -> str:
    lines, sections = [], {}
    for _ in range(draw(st.integers(0, 6))):
        section = draw(st.sampled_from(list(KEYS)))
        key = draw(st.one_of(st.sampled_from(KEYS[section] or ["x"]), st.text(min_size=1, max_size=5)))
        sections.setdefault(section, {})[key] = draw(values)
    for section, entries in sorted(sections.items(), key=lambda kv: kv[0] != ""):
        if section:
            lines.append(f"[{section}]")
        for key, value in entries.items():
            lines.append(f'"{key}" = {toml_value(value)}')
    text = "\n".join(lines) + "\n"
    if draw(st.booleans()):  # mutate: cut, duplicate or flip a byte
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", "\n[proxy]\n", "=", '"', "\x00"])) + text[cut:]
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_loads_or_fails_with_one_line(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            loaded = load_settings(path)
        except ConfigError as exc:
            assert ("\n" not in str(exc) and str(path) in str(exc)) or "environment" in str(exc)
            return
        # whatever loads renders an nginx config without injected syntax
        render(ProxyConfig(loaded.proxy.server_name, loaded.auth.realm))


def test_cli_exit_2_without_traceback_and_no_engine_contact(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[proxy]\nserver_name = "x; return 200"\n[docker]\nhost = "unix:///nonexistent.sock"\n')
    for command in (["check-config"], ["run"], ["status"]):
        result = subprocess.run(
            [sys.executable, "-m", "supervisor", *command, "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result
        output = (result.stdout + result.stderr).strip()
        assert "Traceback" not in output and "proxy.server_name" in output
        assert "nonexistent.sock" not in output  # never got as far as the engine
