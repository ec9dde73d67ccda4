#!/usr/bin/env python3
"""Times `metacache verify` on a large topic: N events (default 1,000,000) of 100,000
devices and 1,000 namespaces are produced to librdkafka's mock Kafka (`metacache
mock-kafka`, zstd batches so the mock's ~5 MiB per partition holds them), a real daemon
drains them into a redis-server child, then verify reads both topics and Redis and
compares. Prints the daemon's drain time and verify's time and summary.

    python3 scripts/verify-timing.py [target/release/metacache] [events]

Needs redis-server and kcat (Debian packages).
"""

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
        return json.load(r)


def main():
    binary = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "release" / "metacache"
    events = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    work = Path(tempfile.mkdtemp(prefix="metacache-verify-"))
    procs = []
    try:
        kafka = subprocess.Popen(
            [str(binary), "mock-kafka", "--partitions", "16", "--topic", "device-metadata",
             "--topic", "metric-catalog", "--topic", "device-metadata.dlq",
             "--topic", "metric-catalog.dlq"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(kafka)
        bootstrap = kafka.stdout.readline().strip()
        redis_port = free_port()
        procs.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "",
                                       "--appendonly", "no"], stdout=subprocess.DEVNULL))

        rng = random.Random(1)
        devices, metrics = [], []
        for i in range(events):
            if rng.random() < 0.9:
                d = rng.randrange(100_000)
                ts = 1_795_334_400 + rng.randrange(86_400)
                value = {"device_id": f"dev-{d}", "datatype_id": f"dt-{d % 10}",
                         "datatype_name": "temperature", "datatype_unit": "C",
                         "persist": bool(d % 2),
                         "last_updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)),
                         "site": f"plant-{d % 5}"}
                devices.append(f"dev-{d}\t{json.dumps(value)}")
            else:
                ns = f"ns-{rng.randrange(1000)}"
                op = "replace" if rng.random() < 0.2 else rng.choice(["add", "remove"])
                names = [f"m{rng.randrange(50)}" for _ in range(rng.randrange(1, 5))]
                metrics.append(f"{ns}\t{json.dumps({'op': op, 'namespace': ns, 'metric_names': names})}")
        t = time.time()
        for topic, lines in (("device-metadata", devices), ("metric-catalog", metrics)):
            subprocess.run(["kcat", "-P", "-b", bootstrap, "-t", topic, "-K", "\t", "-z", "zstd",
                            "-X", "linger.ms=50", "-X", "batch.num.messages=10000"],
                           input="\n".join(lines) + "\n", text=True, check=True)
        print(f"produced {events} events in {time.time() - t:.1f} s")

        http_port = free_port()
        env = dict(os.environ, METACACHE__KAFKA__BROKERS=bootstrap,
                   METACACHE__REDIS__URL=f"redis://127.0.0.1:{redis_port}/0",
                   METACACHE__HTTP__LISTEN=f"127.0.0.1:{http_port}",
                   METACACHE__KAFKA__CLIENT__FETCH_WAIT_MAX_MS="10")
        t = time.time()
        daemon = subprocess.Popen([str(binary), "run"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(work / "daemon.log", "w"))
        procs.append(daemon)
        while True:
            time.sleep(1)
            try:
                s = stats(http_port)
            except Exception:
                continue
            parts = s["kafka"]["partitions"]
            if len(parts) == 32 and all(p["lag"] == 0 and p["committed"] > 0 for p in parts
                                        if p["high_watermark"] > 0):
                break
            if time.time() - t > 900:
                raise SystemExit("the daemon did not catch up within 15 minutes")
        print(f"daemon drained and committed in {time.time() - t:.1f} s")
        daemon.terminate()
        daemon.wait(timeout=60)

        t = time.time()
        run = subprocess.run([str(binary), "verify", "--brokers", bootstrap,
                              "--redis-url", f"redis://127.0.0.1:{redis_port}/0"],
                             capture_output=True, text=True)
        took = time.time() - t
        print(run.stdout)
        print(run.stderr, file=sys.stderr)
        print(f"metacache verify: exit {run.returncode} in {took:.1f} s")
    finally:
        for p in reversed(procs):
            if p.stdin:
                p.stdin.close()
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
