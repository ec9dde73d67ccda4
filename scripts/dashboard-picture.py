#!/usr/bin/env python3
"""Draws docs/dashboard.png: the Grafana dashboard's panels over a real run.

Grafana is not installable on the build machine, so this does what Grafana would do with
what is: a real metacache daemon (against librdkafka's mock Kafka, `metacache mock-kafka`,
and a redis-server child) is scraped every second by a real Prometheus (Debian's
`prometheus` package); every panel query of helm/metacache/dashboards/metacache.json is
then run against that Prometheus (query_range, with Grafana's variables filled in) and
drawn with matplotlib in the dashboard's layout. Traffic: steady device and catalog
events with a few invalid ones, then 20 s of Redis refusing writes (OOM), then recovery.

    python3 scripts/dashboard-picture.py [target/release/metacache]

Needs: redis-server, prometheus, kcat (Debian packages) and matplotlib (pip).
"""

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "helm" / "metacache" / "dashboards" / "metacache.json"
OUT = ROOT / "docs" / "dashboard.png"
STEP = 2  # seconds between points
RATE = "10s"  # stands for Grafana's $__rate_interval at a 1 s scrape


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read()
        except Exception:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def device(i, rng, valid=True):
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - rng.randrange(3600)))
    value = {"device_id": f"dev-{i}", "datatype_id": f"dt-{i % 7}",
             "datatype_name": "temperature", "datatype_unit": "C",
             "persist": True, "last_updated": ts + "Z", "site": f"plant-{i % 3}"}
    if not valid and rng.random() < 0.5:
        del value["datatype_id"]
    elif not valid:
        value["last_updated"] = "yesterday"
    return f"dev-{i}\t{json.dumps(value)}"


def metric(rng):
    ns = f"ns-{rng.randrange(40)}"
    op = rng.choice(["add", "add", "remove", "replace"])
    names = [f"m{rng.randrange(30)}" for _ in range(rng.randrange(1, 4))]
    return f"{ns}\t{json.dumps({'op': op, 'namespace': ns, 'metric_names': names})}"


def produce(bootstrap, topic, lines):
    subprocess.run(["kcat", "-P", "-b", bootstrap, "-t", topic, "-K", "\t", "-z", "lz4"],
                   input="\n".join(lines) + "\n", text=True, check=True)


def query_range(prom, expr, start, end):
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": STEP})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{params}", timeout=30) as r:
        body = json.load(r)
    if body["status"] != "success":
        raise SystemExit(f"query failed: {expr}: {body}")
    return body["data"]["result"]


def legend(fmt, labels):
    out = fmt
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def main():
    binary = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "release" / "metacache"
    work = Path(tempfile.mkdtemp(prefix="metacache-dashboard-"))
    procs = []
    try:
        kafka = subprocess.Popen(
            [str(binary), "mock-kafka", "--partitions", "4", "--topic", "device-metadata",
             "--topic", "metric-catalog", "--topic", "device-metadata.dlq",
             "--topic", "metric-catalog.dlq"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(kafka)
        bootstrap = kafka.stdout.readline().strip()
        redis_port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "",
                                  "--appendonly", "no", "--maxmemory", "256mb"],
                                 stdout=subprocess.DEVNULL)
        procs.append(redis)
        time.sleep(0.5)
        http_port = free_port()
        env = dict(os.environ,
                   METACACHE__KAFKA__BROKERS=bootstrap,
                   METACACHE__REDIS__URL=f"redis://127.0.0.1:{redis_port}/0",
                   METACACHE__HTTP__LISTEN=f"127.0.0.1:{http_port}",
                   METACACHE__KAFKA__CLIENT__FETCH_WAIT_MAX_MS="10",
                   METACACHE__LOG__FORMAT="text")
        daemon = subprocess.Popen([str(binary), "run"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=open(work / "daemon.log", "w"))
        procs.append(daemon)
        wait_http(f"http://127.0.0.1:{http_port}/healthz")
        prom_port = free_port()
        (work / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: metacache\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{http_port}']}}]\n")
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={work / 'prometheus.yml'}",
             f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "w"))
        procs.append(prom)
        prom_url = f"http://127.0.0.1:{prom_port}"
        wait_http(f"{prom_url}/-/ready")

        rng = random.Random(7)
        start = time.time()
        redis_cli = ["redis-cli", "-p", str(redis_port)]
        phase_log = []
        for second in range(150):
            devices = [device(rng.randrange(5000), rng, valid=rng.random() > 0.01)
                       for _ in range(1500)]
            produce(bootstrap, "device-metadata", devices)
            produce(bootstrap, "metric-catalog", [metric(rng) for _ in range(300)])
            if second == 60:
                subprocess.run(redis_cli + ["CONFIG", "SET", "maxmemory", "1"], check=True,
                               stdout=subprocess.DEVNULL)
                phase_log.append((time.time(), "Redis refuses writes (OOM)"))
            if second == 80:
                subprocess.run(redis_cli + ["CONFIG", "SET", "maxmemory", "256mb"], check=True,
                               stdout=subprocess.DEVNULL)
                phase_log.append((time.time(), "Redis takes writes again"))
            time.sleep(max(0.0, start + second + 1 - time.time()))
        time.sleep(20)
        end = time.time()
        draw(prom_url, start, end, phase_log)
        print(f"wrote {OUT.relative_to(ROOT)} ({end - start:.0f} s of a real run)")
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


def draw(prom, start, end, phases):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    rows = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            rows.append((panel["title"], []))
        else:
            rows[-1][1].append(panel)
    fig, axes = plt.subplots(len(rows), 3, figsize=(18, 4.2 * len(rows)))
    fig.suptitle("metacache (Grafana dashboard panels over a real run, drawn from Prometheus)",
                 fontsize=15)
    for r, (row_title, panels) in enumerate(rows):
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.set_title(f"{row_title}: {panel['title']}", fontsize=10, loc="left")
            for target in panel["targets"]:
                expr = (target["expr"].replace("$__rate_interval", RATE)
                        .replace("$__range", f"{int(end - start)}s")
                        .replace('job=~"$job"', 'job="metacache"'))
                for series in query_range(prom, expr, start, end):
                    xs = [float(t) - start for t, _ in series["values"]]
                    ys = [float(v) for _, v in series["values"]]
                    ax.plot(xs, ys, label=legend(target.get("legendFormat", ""), series["metric"]),
                            linewidth=1.2)
            for at, label in phases:
                ax.axvline(at - start, color="grey", linestyle=":", linewidth=0.8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
            ax.set_xlabel("seconds", fontsize=8)
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
            if unit and unit != "short":
                ax.set_ylabel(unit, fontsize=8)
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.text(0.01, 0.005, "Dotted lines: " + "; ".join(
        f"{at - start:.0f} s {label}" for at, label in phases), fontsize=9)
    fig.tight_layout(rect=(0, 0.01, 1, 0.98))
    fig.savefig(OUT, dpi=70)


if __name__ == "__main__":
    main()
