"""Real servers on 127.0.0.1 for the remote-store tests: moto's S3 server (with IAM auth on) and http.server.

The S3 server is moto's own ``moto.server`` in a subprocess on a free port.
Two IAM users are made before authentication is switched on: ``rw`` (s3:*)
and ``ro`` (GetObject/ListBucket only); from then on every request must be
signed by one of their keys, so a wrong key or a denied action gets the
same 403 a real S3 gives.

Import into a test module with ``from remote_fixtures import *``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "jitcache-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    rw: tuple[str, str]     # access key id, secret
    ro: tuple[str, str]

    def env(self, keys: tuple[str, str] | None = None) -> dict[str, str]:
        """The standard AWS variables a node would have (``keys``: which user; default ``rw``)."""
        key_id, secret = keys or self.rw
        return {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.endpoint}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{endpoint}/moto-api/", proc)
        anon = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                    aws_secret_access_key="setup")
        iam = boto3.client("iam", **anon)
        keys = {}
        for user, actions in (("rw", ["s3:*"]), ("ro", ["s3:GetObject", "s3:ListBucket"])):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="jitcache", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        boto3.client("s3", **anon).create_bucket(Bucket=BUCKET)
        # From here on moto checks every request's signature and the user's policy, as S3 does.
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                                      headers={"Content-Type": "text/plain"}))
        yield S3Server(endpoint, keys["rw"], keys["ro"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_url(s3_server, monkeypatch) -> str:
    """A fresh prefix in the test bucket, with this process's AWS variables set to the ``rw`` user."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def http_server(tmp_path):
    """``(directory, url)``: ``python -m http.server`` on 127.0.0.1 serving a fresh directory."""
    directory = tmp_path / "www"
    directory.mkdir()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port), "-d", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/", proc)
        yield directory, url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def one_bucket_profile(tmp_path) -> Path:
    """h200-ep1 capped at 1 token: one bucket, 4 kernels + the barrier (a real AOT compile in seconds)."""
    profile = tmp_path / "one-bucket.toml"
    text = (Path(__file__).resolve().parents[1] / "cache_profiles" / "h200-ep1.toml").read_text()
    profile.write_text(text.replace("max_num_batched_tokens = 8192", "max_num_batched_tokens = 1"))
    return profile


__all__ = ["BUCKET", "S3Server", "free_port", "http_server", "one_bucket_profile", "s3_server", "s3_url"]
