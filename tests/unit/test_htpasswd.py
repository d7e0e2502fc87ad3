import shutil
import subprocess

import pytest

from supervisor import htpasswd
from supervisor.errors import UserError


def test_add_replace_remove(tmp_path):
    path = tmp_path / "htpasswd"
    assert htpasswd.add_user(path, "alice", "s3cret!", gid=None) is False
    assert htpasswd.add_user(path, "bob", "hunter2", gid=None) is False
    assert htpasswd.add_user(path, "alice", "changed", gid=None) is True
    users = htpasswd.load(path)
    assert list(users.hashes) == ["bob", "alice"]
    assert users.hashes["alice"].startswith("$2y$05$")
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    htpasswd.remove_user(path, "bob", gid=None)
    assert list(htpasswd.load(path).hashes) == ["alice"]
    with pytest.raises(UserError, match="'bob' does not exist"):
        htpasswd.remove_user(path, "bob", gid=None)


@pytest.mark.skipif(shutil.which("htpasswd") is None, reason="apache2-utils not installed")
def test_apache_htpasswd_verifies_the_hashes(tmp_path):
    path = tmp_path / "htpasswd"
    htpasswd.add_user(path, "alice", "correct horse", gid=None)
    ok = subprocess.run(["htpasswd", "-vb", str(path), "alice", "correct horse"], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(["htpasswd", "-vb", str(path), "alice", "wrong"], capture_output=True)
    assert bad.returncode != 0


@pytest.mark.parametrize("name", ["", "a:b", "has space", "tab\there", "nl\n", "x" * 65, "bell\x07"])
def test_bad_names_refused(tmp_path, name):
    with pytest.raises(UserError):
        htpasswd.add_user(tmp_path / "htpasswd", name, "pw", gid=None)
    assert not (tmp_path / "htpasswd").exists()


def test_empty_and_overlong_passwords_refused(tmp_path):
    with pytest.raises(UserError, match="empty password"):
        htpasswd.add_user(tmp_path / "htpasswd", "alice", "", gid=None)
    with pytest.raises(UserError, match="longer than 72"):
        htpasswd.add_user(tmp_path / "htpasswd", "alice", "x" * 73, gid=None)


def test_malformed_lines_reported_and_kept(tmp_path):
    path = tmp_path / "htpasswd"
    path.write_text("alice:$2y$10$abc\nthis line is broken\n# comment\nbob:$2y$10$def\n")
    users = htpasswd.load(path)
    assert list(users.hashes) == ["alice", "bob"]
    assert [(m.line_number, m.reason) for m in users.malformed] == [(2, "expected NAME:HASH")]
    htpasswd.add_user(path, "carol", "pw", gid=None)
    text = path.read_text()
    assert "this line is broken" in text and "# comment" in text and "carol:" in text


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "htpasswd"
    htpasswd.add_user(path, "alice", "pw", gid=None)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        htpasswd.add_user(path, "bob", "pw", gid=None)
    assert path.read_bytes() == before
    assert [
        p.name for p in tmp_path.iterdir() if p.name.startswith(".htpasswd.") and not p.name.endswith(".lock")
    ] == []
