"""A real S3-compatible server for the tests: moto's server mode, over HTTP on loopback.

The workloads reach it exactly as they would reach a cloud bucket, through fsspec's s3fs, with the
endpoint and credentials from the environment (`FSSPEC_S3_ENDPOINT_URL`, `AWS_*`).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ObjectStore:
    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach the store (the credentials are moto's fixed test ones)."""
        return {"FSSPEC_S3_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def reach_from_here(self, monkeypatch: Any) -> None:
        """Point this process's fsspec at the store, as a pod's environment would (for the test's
        duration): s3fs reads the endpoint from fsspec's config, which took the environment at import."""
        import fsspec.config

        for key, value in self.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": self.endpoint})

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, key="testing", secret="testing", skip_instance_cache=True,
                                 use_listings_cache=False)  # the tests watch objects appear

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])


@contextmanager
def object_store() -> Iterator[ObjectStore]:
    """A server with one empty bucket. moto keeps its buckets per process, whatever the server, so
    each store gets a bucket of its own name."""
    import uuid

    from moto.server import ThreadedMotoServer

    bucket = f"alpaca-{uuid.uuid4().hex[:12]}"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        store = ObjectStore(f"http://127.0.0.1:{port}", bucket)
        store.filesystem().mkdir(bucket)
        yield store
    finally:
        server.stop()
