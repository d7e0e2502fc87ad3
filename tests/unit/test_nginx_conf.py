import shutil
import subprocess
from pathlib import Path

import pytest

from supervisor import tls
from supervisor.nginx_conf import ProxyConfig, render


def test_keeps_the_posts_behaviour():
    conf = render(ProxyConfig(server_name="reg.example.com", realm="Private Registry"))
    for line in [
        "listen 443 ssl;",
        "server_name reg.example.com;",
        "client_max_body_size 0;",
        "chunked_transfer_encoding on;",
        'auth_basic "Private Registry";',
        "auth_basic_user_file /etc/nginx/conf.d/htpasswd;",
        "add_header Docker-Distribution-Api-Version $docker_distribution_api_version always;",
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_read_timeout 900;",
        "server registry:5000;",
        r'if ($http_user_agent ~ "^(docker\/1\.(3|4|5(?!\.[0-9]-dev))|Go ).*$")',
        # never spool a layer to disk inside the container
        "proxy_request_buffering off;",
        "proxy_http_version 1.1;",
        "proxy_max_temp_file_size 0;",
    ]:
        assert line in conf, line
    assert "ssl on" not in conf  # removed from nginx in 1.25.1


@pytest.mark.parametrize("field", ["server_name", "realm"])
@pytest.mark.parametrize("value", ['x"; return 200; #', "x;", "x}", "x{", "a\nb", "$host", "a\\b"])
def test_refuses_injection(field, value):
    kwargs = {"server_name": "localhost", "realm": "Registry", field: value}
    with pytest.raises(ValueError, match="inject"):
        render(ProxyConfig(**kwargs))


@pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="needs Debian's nginx binary (installed by tests/setup)",
)
@pytest.mark.parametrize("upstream_tasks", ["", "tasks.regsupervisor-registry"], ids=["standalone", "swarm"])
def test_debian_nginx_accepts_it(tmp_path, upstream_tasks):
    """`nginx -t` with Debian's 1.22, the paths rewritten to a scratch prefix."""
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    pair = tls.ensure_generated(tmp_path / "tls", "localhost")
    (conf_dir / "server.crt").write_bytes(pair.cert_pem)
    (conf_dir / "server.key").write_bytes(pair.key_pem)
    (conf_dir / "htpasswd").write_text("")
    server = render(
        ProxyConfig(
            server_name="localhost", realm="Registry", conf_dir=str(conf_dir), upstream_tasks=upstream_tasks
        )
    )
    # nginx -t resolves upstream names: point "registry" at loopback for the check.
    server = server.replace("server registry:5000;", "server 127.0.0.1:5000;")
    (conf_dir / "registry.conf").write_text(server)
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"error_log {tmp_path}/error.log; pid {tmp_path}/nginx.pid;\n"
        "events {}\n"
        f"http {{ client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;"
        f" access_log off; include {conf_dir}/*.conf; }}\n"
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(main)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr, result.stderr


def test_swarm_mode_resolves_the_registry_tasks_while_running():
    server = render(ProxyConfig("localhost", "Registry", upstream_tasks="tasks.rs-registry"))
    assert "resolver 127.0.0.11 valid=5s" in server
    assert "upstream docker-registry" not in server
    assert server.count("set $registry_tasks tasks.rs-registry:5000;") == 2
    assert "proxy_pass http://$registry_tasks;" in server
    with pytest.raises(ValueError, match="tasks"):
        render(ProxyConfig("localhost", "Registry", upstream_tasks="tasks.x; evil"))
