"""A real S3 endpoint on 127.0.0.1 for the tests: moto's server mode (an HTTP server speaking the S3 API,
conditional puts included), started on a free port by a session fixture and stopped after the session.

The fixture sets the standard AWS environment variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP) for the session, as a user would, and creates a bucket;
latentstore finds the endpoint through them (obstore's from_url), never through a test-only hook.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass

import pytest

BUCKET = "latentstore-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Endpoint:
    url: str  # http://127.0.0.1:PORT
    bucket: str
    env: dict  # the AWS_* variables that point a process at it

    def prefix(self, name: str = "") -> str:
        """A fresh s3:// prefix in the test bucket."""
        return f"s3://{self.bucket}/{name or 'p'}-{uuid.uuid4().hex[:8]}"

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="test",
                            aws_secret_access_key="test")

    def keys(self, url: str) -> dict[str, bytes]:
        """Every object under an s3:// prefix -> its bytes (relative names)."""
        bucket, _, prefix = url[5:].partition("/")
        c, out = self.client(), {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            for o in page.get("Contents", []):
                out[o["Key"][len(prefix) + 1:]] = c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        return out


@pytest.fixture(scope="session")
def s3():
    """The loopback S3 endpoint, with the environment set for this process and any child it starts."""
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        t0 = time.time()
        while True:  # bounded wait for the socket
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() - t0 > 10:
                    raise
                time.sleep(0.05)
        ep = S3Endpoint(url, BUCKET, env)
        ep.client().create_bucket(Bucket=BUCKET)
        yield ep
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class static_http:
    """A plain static HTTP server (python's http.server, no Range support) for `directory` on 127.0.0.1:
    `with static_http(d) as url:` serves d's files under url, stopped on exit."""

    def __init__(self, directory: str):
        import functools
        import http.server

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=directory))

    def __enter__(self) -> str:
        import threading
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
