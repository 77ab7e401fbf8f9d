"""moto in server mode: a real HTTP AWS API (Secrets Manager, S3) on a loopback port.

:func:`start_moto` runs it in a thread of the test process (one per session; reset
between tests); :class:`MotoProcess` runs ``python -m moto.server`` as a separate
process, for tests that stop and restart it to simulate an outage.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from tests.support.postgres import free_port

REGION = "eu-west-1"
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def secretsmanager_client(endpoint_url: str) -> Any:
    import boto3

    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client("secretsmanager", endpoint_url=endpoint_url)


def s3_client(endpoint_url: str) -> Any:
    """An S3 client for moto with dummy credentials (create buckets, inspect objects)."""
    import boto3

    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client("s3", endpoint_url=endpoint_url)


def create_bucket(client: Any, name: str) -> None:
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})


@dataclass
class MotoServer:
    url: str
    _server: Any = field(repr=False, default=None)

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def client(self) -> Any:
        return secretsmanager_client(self.url)

    def s3(self) -> Any:
        return s3_client(self.url)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


def start_moto() -> MotoServer:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return MotoServer(url=f"http://{host}:{port}", _server=server)


class MotoProcess:
    """``python -m moto.server`` on a fixed port: stop it and start it again at will
    (its state does not survive a restart)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto server exited on start") from None
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto server not ready on {self.url} after {timeout} s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
