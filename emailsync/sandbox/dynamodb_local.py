"""Amazon DynamoDB Local for the tests, the benchmarks and `--dynamodb local` sandboxes: the real engine, with
DynamoDB's limits, in a JVM on a loopback port.

It ships inside the npm package amplify-dynamodb-simulator (emulator/DynamoDBLocal.jar and its native libraries).
Found, in order: $EMAILSYNC_DYNAMODB_LOCAL (the folder holding DynamoDBLocal.jar), the user's cache folder, or
fetched once into that cache with `npm pack` (about 56 MB, a few seconds; no npm dependencies are installed).
Without Java or npm there is none: the tests and benchmarks fall back to the moto server, the sandbox says so.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

PACKAGE = "amplify-dynamodb-simulator"
JAR = "DynamoDBLocal.jar"


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "emailsync" / "dynamodb-local"


def emulator_dir() -> Path | None:
    """The folder holding DynamoDBLocal.jar and DynamoDBLocal_lib, fetched if need be; None without Java or npm."""
    given = os.environ.get("EMAILSYNC_DYNAMODB_LOCAL")
    if given:
        return Path(given) if (Path(given) / JAR).is_file() else None
    if shutil.which("java") is None:
        return None
    cache = _cache()
    if (cache / JAR).is_file():
        return cache
    if shutil.which("npm") is None:
        return None
    cache.parent.mkdir(parents=True, exist_ok=True)
    # One fetch however many pytest-xdist workers ask at once.
    with open(cache.parent / ".dynamodb-local.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (cache / JAR).is_file():
            return cache
        with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
            done = subprocess.run(
                ["npm", "pack", PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True, timeout=300
            )
            tgz = next(Path(tmp).glob("*.tgz"), None)
            if done.returncode != 0 or tgz is None:
                return None
            with tarfile.open(tgz) as t:
                members = [m for m in t.getmembers() if m.name.startswith("package/emulator/")]
                t.extractall(tmp, members=members, filter="data")
            staged = Path(tmp) / "package" / "emulator"
            if not (staged / JAR).is_file():
                return None
            staged.rename(cache)
    return cache


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DynamoDBLocal:
    """One in-memory DynamoDB Local process (-sharedDb: one database whatever the credentials and region)."""

    def __init__(self, emulator: Path) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server; closed by stop())
        self.proc = subprocess.Popen(
            [
                "java",
                "-Xmx512m",
                f"-Djava.library.path={emulator / 'DynamoDBLocal_lib'}",
                "-jar",
                str(emulator / JAR),
                "-inMemory",
                "-sharedDb",
                "-port",
                str(self.port),
            ],
            cwd=emulator,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait()

    def _wait(self) -> None:
        import boto3

        client = boto3.client(
            "dynamodb",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                client.list_tables()
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.log.seek(0)
                    raise RuntimeError(f"DynamoDB Local did not start: {self.log.read()[-2000:]!r}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
