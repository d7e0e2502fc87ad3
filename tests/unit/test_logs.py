import io
import os

import structlog

from supervisor import logs


def test_journal_lines_carry_priorities_and_no_secrets():
    out = io.StringIO()
    logs.configure("journal", "debug", out)
    log = structlog.get_logger()
    log.info("container started", service="registry")
    log.warning("probe failed", detail="GET /: timed out")
    log.error("registry respawning too fast, stopped", password="hunter2", http_secret="s3")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("daemon crashed")
    lines = out.getvalue().splitlines()
    assert lines[0] == "<6>container started service=registry"
    assert lines[1] == '<4>probe failed detail="GET /: timed out"'
    assert lines[2].startswith("<3>registry respawning too fast, stopped")
    assert "hunter2" not in out.getvalue() and "s3" not in lines[2]
    # a traceback keeps the error priority on every line
    assert all(line.startswith("<3>") for line in lines[3:]) and any(
        "RuntimeError" in line for line in lines[3:]
    )


def test_auto_picks_journal_only_when_stderr_is_the_journal(tmp_path, monkeypatch):
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.configure("auto", "info", stream) == "journal"
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")
        assert logs.configure("auto", "info", stream) == "console"
