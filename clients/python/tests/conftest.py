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


TOKEN = "python-test-token-0123456789abcdef"


@pytest.fixture(scope="session")
def api_url(daemon_binary, cache_url, tmp_path_factory):
    """The real daemon (`metacache run`) serving the read API over the demo's cache; its
    Kafka is the mock cluster `metacache mock-kafka` serves (topics empty: nothing is
    written while the tests read)."""
    work = tmp_path_factory.mktemp("api")
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    kafka = subprocess.Popen(
        [str(daemon_binary), "mock-kafka", "--partitions", "1", "--topic", "device-metadata",
         "--topic", "metric-catalog", "--topic", "device-metadata.dlq",
         "--topic", "metric-catalog.dlq"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    bootstrap = kafka.stdout.readline().strip()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METACACHE")}
    env.update(METACACHE__KAFKA__BROKERS=bootstrap, METACACHE__REDIS__URL=cache_url,
               METACACHE__HTTP__LISTEN=f"127.0.0.1:{port}",
               METACACHE__API__TOKEN_FILE=str(token_file))
    daemon = subprocess.Popen([str(daemon_binary), "run"], env=env, cwd=work,
                              stdout=subprocess.DEVNULL, stderr=open(work / "daemon.log", "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if daemon.poll() is not None or time.time() > deadline:
                pytest.fail("the daemon did not serve: " + (work / "daemon.log").read_text())
            time.sleep(0.1)
    yield url
    daemon.terminate()
    daemon.wait(timeout=30)
    kafka.stdin.close()
    kafka.wait(timeout=30)


@pytest.fixture()
def pipeline(daemon_binary, tmp_path):
    """A fresh redis-server, the mock Kafka and the real daemon between them: what is
    published lands in this Redis. Yields (bootstrap, redis URL)."""
    proc, port = start_redis()
    url = f"redis://127.0.0.1:{port}/0"
    kafka = subprocess.Popen(
        [str(daemon_binary), "mock-kafka", "--partitions", "2", "--topic", "device-metadata",
         "--topic", "metric-catalog", "--topic", "device-metadata.dlq",
         "--topic", "metric-catalog.dlq"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    bootstrap = kafka.stdout.readline().strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METACACHE")}
    env.update(METACACHE__KAFKA__BROKERS=bootstrap, METACACHE__REDIS__URL=url,
               METACACHE__HTTP__LISTEN="127.0.0.1:0",
               METACACHE__KAFKA__CLIENT__FETCH_WAIT_MAX_MS="10")
    daemon = subprocess.Popen([str(daemon_binary), "run"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "daemon.log", "w"))
    yield bootstrap, url
    daemon.terminate()
    daemon.wait(timeout=30)
    kafka.stdin.close()
    kafka.wait(timeout=30)
    proc.terminate()
    proc.wait(timeout=10)
