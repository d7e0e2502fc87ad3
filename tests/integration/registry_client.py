"""A minimal Distribution API client: push an image (monolithic blob uploads) and pull it back."""

from __future__ import annotations

import hashlib
import json
import os

import requests

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(session: requests.Session, base: str, repo: str, blob: bytes) -> str:
    digest = _digest(blob)
    start = session.post(f"{base}/v2/{repo}/blobs/uploads/", timeout=30)
    assert start.status_code == 202, (start.status_code, start.text)
    location = start.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    put = session.put(
        f"{location}{sep}digest={digest}",
        data=blob,
        timeout=600,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert put.status_code == 201, (put.status_code, put.text)
    return digest


def push_image(
    session: requests.Session, base: str, repo: str, tag: str = "latest", layer: bytes | None = None
) -> str:
    """Push a one-layer image; returns the manifest digest."""
    layer = layer if layer is not None else os.urandom(64 * 1024)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": push_blob(session, base, repo, config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer),
                    "digest": push_blob(session, base, repo, layer),
                }
            ],
        }
    ).encode()
    put = session.put(
        f"{base}/v2/{repo}/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": MANIFEST_TYPE},
        timeout=30,
    )
    assert put.status_code == 201, (put.status_code, put.text)
    return put.headers["Docker-Content-Digest"]


def pull_image(session: requests.Session, base: str, repo: str, tag: str = "latest") -> str:
    """Fetch the manifest and every blob, checking each digest; returns the manifest digest."""
    got = session.get(f"{base}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPE}, timeout=30)
    assert got.status_code == 200, (got.status_code, got.text)
    manifest = got.json()
    for ref in [manifest["config"], *manifest["layers"]]:
        blob = session.get(f"{base}/v2/{repo}/blobs/{ref['digest']}", timeout=600)
        assert blob.status_code == 200, (blob.status_code, blob.text)
        assert _digest(blob.content) == ref["digest"]
    assert _digest(got.content) == got.headers["Docker-Content-Digest"]
    return got.headers["Docker-Content-Digest"]


def session_for(auth: tuple[str, str], ca: str) -> requests.Session:
    session = requests.Session()
    session.auth = auth
    session.verify = ca
    # REQUESTS_CA_BUNDLE in the environment would otherwise override verify (requests #3829).
    session.trust_env = False
    return session
