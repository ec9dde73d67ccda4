"""A real redis-server on a free port, filled by the real daemon: `metacache demo --once`
runs the whole pipeline (librdkafka's mock Kafka, the writer) on the repository's sample
events (examples/demo-events.jsonl) into this Redis. Set METACACHE_BIN to the binary, or
build it first (`cargo build`; the default is target/debug/metacache)."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(*args: str):
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--save", "", "--appendonly", "no", *args],
                            stdout=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("redis-server did not start")


@pytest.fixture(scope="session")
def daemon_binary() -> Path:
    path = Path(os.environ.get("METACACHE_BIN", ROOT / "target" / "debug" / "metacache"))
    if not path.exists():
        pytest.fail(f"{path} not found: build metacache first (cargo build) or set METACACHE_BIN")
    return path


@pytest.fixture(scope="session")
def cache_url(daemon_binary):
    proc, port = start_redis()
    url = f"redis://127.0.0.1:{port}/0"
    run = subprocess.run([str(daemon_binary), "demo", "--once", "--redis-url", url],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture()
def raw(cache_url):
    conn = redis.Redis.from_url(cache_url)
    yield conn
    conn.close()
