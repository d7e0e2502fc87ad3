"""regsupervisor: runs a private Docker registry behind an nginx TLS/auth proxy and keeps it alive."""

__version__ = "0.1.0"
