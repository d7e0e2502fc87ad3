"""Benchmark of regsupervisor against the post's docker-compose stack (issue 5): bench/run."""
