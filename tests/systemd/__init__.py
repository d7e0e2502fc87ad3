"""regsupervisor.service under a real systemd (PID 1 in a container) driving the host's engine."""
