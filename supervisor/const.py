"""Names shared by every module: labels, service names, in-container paths, exit codes."""

LABEL_PREFIX = "io.regsupervisor"
LABEL_PROJECT = f"{LABEL_PREFIX}.project"
LABEL_SERVICE = f"{LABEL_PREFIX}.service"
LABEL_CONFIG_HASH = f"{LABEL_PREFIX}.config-hash"
LABEL_VERSION = f"{LABEL_PREFIX}.version"
# On swarm task containers (not LABEL_PROJECT: standalone mode must not take them for its own).
LABEL_SWARM_PROJECT = f"{LABEL_PREFIX}.swarm-project"

SERVICE_REGISTRY = "registry"
SERVICE_NGINX = "nginx"
# Start order: nginx resolves the registry's name when it starts.
SERVICE_ORDER = (SERVICE_REGISTRY, SERVICE_NGINX)

# The post's link alias: nginx reaches the registry as http://registry:5000.
REGISTRY_ALIAS = "registry"
REGISTRY_PORT = 5000
NGINX_TLS_PORT = 443
# nginx's internal, unpublished status listener: proves the registry answers through nginx.
NGINX_STATUS_PORT = 8080
NGINX_STATUS_PATH = "/registry-health"
NGINX_ALIVE_PATH = "/nginx-health"

REGISTRY_DATA_IN_CONTAINER = "/var/lib/registry"
NGINX_CONF_DIR_IN_CONTAINER = "/etc/nginx/conf.d"
NGINX_CONF_FILE = "registry.conf"
NGINX_CERT_FILE = "server.crt"
NGINX_KEY_FILE = "server.key"
HTPASSWD_FILE = "htpasswd"
# The generated local CA's certificate, under state_dir/tls: what clients must trust.
CA_CERT_FILE = "ca.crt"
# uid/gid of the nginx user in the upstream image (and in the images built from Debian packages).
NGINX_GID = 101

DEFAULT_CONFIG_PATH = "/etc/regsupervisor/config.toml"
CONFIG_ENV = "REGSUPERVISOR_CONFIG"
ENV_PREFIX = "REGSUPERVISOR_"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
# The daemon gave up: a service was "respawning too fast" (Upstart's wording) or could not start.
EXIT_RESPAWN_LIMIT = 3
