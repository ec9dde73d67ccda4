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
from typing import List, Optional

import pytest
import redis

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server() -> str:
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (Debian: apt-get install redis-server)")
    return server


def serve(command, port: int, what: str = "redis-server"):
    """Starts ``command`` and waits (10 s at most) until it accepts connections on
    ``port``; a process that exits or never listens fails the test with its name."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode} before listening on port {port}: {command}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    stop(proc)
    pytest.fail(f"{what} did not listen on port {port} within 10 s: {command}")


def stop(proc) -> None:
    """Ends a process this suite started, politely first."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def start_redis(*args: str, port: Optional[int] = None):
    port = port or free_port()
    proc = serve([redis_server(), "--port", str(port), "--save", "", "--appendonly", "no", *args], port)
    return proc, port


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


def free_cluster_port(taken) -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port in taken or port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    pytest.fail("found no port whose cluster bus port (+10000) is free")


def wait_until(what: str, check, timeout: float = 30.0) -> None:
    """Polls ``check`` until it is true; fails with ``what`` after ``timeout`` seconds, and
    with the last error it raised, if any."""
    deadline = time.time() + timeout
    last: Optional[Exception] = None
    while time.time() < deadline:
        try:
            if check():
                return
            last = None
        except Exception as e:  # not up yet: keep polling, report it at the end
            last = e
        time.sleep(0.1)
    pytest.fail(f"{what} within {timeout:.0f} s" + (f" (last error: {last})" if last else ""))


@pytest.fixture(scope="session")
def cluster_ports(tmp_path_factory) -> List[int]:
    """A Redis Cluster of three primaries (no replicas) on free ports, created with
    `redis-cli --cluster create`; yields the ports once CLUSTER INFO says ok on every node."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.fail("redis-cli is not installed (Debian: apt-get install redis-tools)")
    work = tmp_path_factory.mktemp("cluster")
    procs = []
    try:
        ports: List[int] = []
        for _ in range(3):
            port = free_cluster_port(ports)
            ports.append(port)
            proc, _ = start_redis("--cluster-enabled", "yes",
                                  "--cluster-config-file", str(work / f"nodes-{port}.conf"),
                                  "--cluster-node-timeout", "2000", "--dir", str(work), port=port)
            procs.append(proc)
        command = [cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                   "--cluster-replicas", "0", "--cluster-yes"]
        try:
            created = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(command)} did not finish within 60 s")
        if created.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed: {created.stdout}{created.stderr}")

        def ok(port: int) -> bool:
            with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as c:
                return b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")

        for port in ports:
            wait_until(f"CLUSTER INFO on 127.0.0.1:{port} did not say cluster_state:ok",
                       lambda: ok(port))
        yield ports
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture(scope="session")
def sentinel_ports(tmp_path_factory):
    """One primary, one replica of it and one sentinel monitoring it as `mymaster` (quorum
    1). Yields (primary port, replica port, sentinel port) once the replica is in sync and
    the sentinel names the primary."""
    work = tmp_path_factory.mktemp("sentinel")
    procs = []
    try:
        primary, primary_port = start_redis()
        procs.append(primary)
        replica, replica_port = start_redis("--replicaof", "127.0.0.1", str(primary_port))
        procs.append(replica)
        sentinel_port = free_port()
        conf = work / "sentinel.conf"  # the sentinel rewrites it: a file of its own
        conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {work}\n"
                        f"sentinel monitor mymaster 127.0.0.1 {primary_port} 1\n"
                        "sentinel down-after-milliseconds mymaster 2000\n"
                        "sentinel failover-timeout mymaster 10000\n")
        procs.append(serve([redis_server(), str(conf), "--sentinel"], sentinel_port, "redis-server --sentinel"))

        def in_sync() -> bool:
            with redis.Redis(port=replica_port, socket_timeout=1) as c:
                return c.info("replication").get("master_link_status") == "up"

        def names_primary() -> bool:
            with redis.Redis(port=sentinel_port, socket_timeout=1) as c:
                found = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
                return bool(found) and int(found[1]) == primary_port

        wait_until(f"the replica on port {replica_port} was not in sync with its primary", in_sync)
        wait_until(f"the sentinel on port {sentinel_port} did not name the primary", names_primary)
        yield primary_port, replica_port, sentinel_port
    finally:
        for proc in reversed(procs):
            stop(proc)
