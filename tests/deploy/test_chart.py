"""The Helm chart (helm/metacache) and the Dockerfile, checked offline.

helm_python (helm-python-sdk) renders and lints the chart with Helm's own library;
kubernetes_validate checks the rendered manifests against the Kubernetes API schemas.
Run from the repository root: `python -m pytest -q tests/deploy`.
"""

import copy
import json
import shutil
import subprocess
import re
import textwrap
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "metacache"
KUBE_VERSION = "1.30.0"
SECRET_ENV = {
    "METACACHE__REDIS__PASSWORD",
    "METACACHE__KAFKA__CLIENT__SASL_USERNAME",
    "METACACHE__KAFKA__CLIENT__SASL_PASSWORD",
}
# Settings that config/default.toml lists only as comments (no default value).
OPTIONAL_SETTINGS = {("redis", "username"): str, ("redis", "db"): int,
                     ("redis", "password_file"): str}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values=None):
    """Rendered manifests as a list of dicts, empty templates left out."""
    manifests = chart.render(values=values or {}, name="mc", namespace="cache")
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def kind(docs, name):
    found = [d for d in docs if d["kind"] == name]
    assert len(found) == 1, f"expected one {name}, got {len(found)}"
    return found[0]


def container(docs):
    return kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def config_toml(docs):
    return tomllib.loads(kind(docs, "ConfigMap")["data"]["metacache.toml"])


def validate(docs):
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: kubernetes_validate ships only the built-in kinds
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def secrets_values():
    return helm.values_from_yaml((Path(__file__).parent / "values-secrets.yaml").read_text())


ALL_OPTIONAL = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "podDisruptionBudget": {"enabled": True},
    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
    "grafanaDashboard": {"enabled": True},
    "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
}


# --- rendering and Kubernetes validity ---------------------------------------------------


def test_defaults_render_valid_manifests(chart):
    docs = render(chart)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "Service"]
    validate(docs)


def test_optional_resources_render_valid_manifests(chart):
    docs = render(chart, ALL_OPTIONAL)
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "PrometheusRule", "Service", "ServiceMonitor",
    ]
    validate(docs)
    deployment = kind(docs, "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    monitor = kind(docs, "ServiceMonitor")["spec"]
    assert monitor["endpoints"][0]["path"] == "/metrics"
    assert monitor["endpoints"][0]["port"] == "http"
    assert monitor["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert kind(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_lint_passes(chart):
    for values in ({}, secrets_values(), ALL_OPTIONAL):
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_notes_tell_how_to_check(chart):
    notes = chart.render(values={}, name="mc", namespace="cache")["metacache/templates/NOTES.txt"]
    for needle in ("kubectl -n cache get pods", "port-forward svc/mc-metacache",
                   "/readyz", "/stats", "check-config"):
        assert needle in notes


# --- the pod ---------------------------------------------------------------------------


def test_probes_point_at_health_endpoints(chart):
    # By default the probes have a listener of their own, which a flood of clients on the
    # main port cannot starve.
    c = container(render(chart))
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert c["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "probes", "containerPort": 8081, "protocol": "TCP"},
    ]
    http = config_toml(render(chart))["http"]
    assert (http["listen"], http["probe_listen"]) == ("0.0.0.0:8080", "0.0.0.0:8081")
    docs = render(chart, {"containerPort": 9100, "probePort": 9101})
    assert [p["containerPort"] for p in container(docs)["ports"]] == [9100, 9101]
    assert config_toml(docs)["http"]["listen"] == "0.0.0.0:9100"
    assert config_toml(docs)["http"]["probe_listen"] == "0.0.0.0:9101"
    # probePort 0: the probes go to the main port, and no probe listener is configured.
    docs = render(chart, {"probePort": 0})
    c = container(docs)
    assert c["livenessProbe"]["httpGet"]["port"] == "http"
    assert c["readinessProbe"]["httpGet"]["port"] == "http"
    assert [p["name"] for p in c["ports"]] == ["http"]
    assert "probe_listen" not in config_toml(docs)["http"]


@pytest.mark.parametrize("timeout", [30, 5, 600])
def test_grace_period_outlasts_the_shutdown_drain(chart, timeout):
    docs = render(chart, {"config": {"shutdown": {"timeout_secs": timeout}}})
    pod = kind(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > timeout
    assert config_toml(docs)["shutdown"]["timeout_secs"] == timeout


def test_security_context(chart):
    docs = render(chart)
    pod = kind(docs, "Deployment")["spec"]["template"]["spec"]
    sc = container(docs)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert volumes[mounts["/etc/metacache"]]["configMap"]["name"] == "mc-metacache"


def test_resources_and_spreading(chart):
    docs = render(chart)
    c = container(docs)
    assert c["resources"] == {
        "requests": {"cpu": "250m", "memory": "128Mi"},
        "limits": {"memory": "256Mi"},
    }
    pod = kind(docs, "Deployment")["spec"]["template"]["spec"]
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == \
        kind(docs, "Deployment")["spec"]["selector"]["matchLabels"]


def test_config_change_rolls_the_pods(chart):
    def checksum(values):
        deployment = kind(render(chart, values), "Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"config": {"writer": {"max_batch": 512}}})


def test_config_file_is_passed_to_the_daemon(chart):
    c = container(render(chart))
    assert c["args"] == ["run"]
    env = {e["name"]: e for e in c["env"]}
    assert env["METACACHE_CONFIG"]["value"] == "/etc/metacache/metacache.toml"
    assert c["image"] == "metacache:0.1.0"


# --- settings and secrets ----------------------------------------------------------------


def test_secret_references_render_env_and_no_secret_value(chart):
    values = secrets_values()
    docs = render(chart, values)
    validate(docs)
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["METACACHE__REDIS__PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "metacache-redis", "key": "redis-password"}}
    assert env["METACACHE__KAFKA__CLIENT__SASL_USERNAME"]["valueFrom"] == {
        "secretKeyRef": {"name": "metacache-kafka", "key": "username"}}
    assert env["METACACHE__KAFKA__CLIENT__SASL_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "metacache-kafka", "key": "password"}}
    for name in SECRET_ENV:
        assert "value" not in env[name]
    assert not [d for d in docs if d["kind"] == "Secret"], "the chart never creates Secrets"
    toml = config_toml(docs)
    assert "password" not in toml["redis"]
    assert toml["kafka"]["client"] == {"security.protocol": "SASL_SSL",
                                       "sasl.mechanism": "SCRAM-SHA-512"}
    assert container(docs)["image"] == "registry.example.com/platform/metacache:0.1.0"


def test_no_secret_env_without_secret_names(chart):
    names = {e["name"] for e in container(render(chart))["env"]}
    assert not names & SECRET_ENV


def test_config_toml_matches_values(chart):
    overrides = {
        "config": {
            "kafka": {
                "brokers": "k1:9092,k2:9092",
                "group_id": "cache-eu",
                "auto_offset_reset": "latest",
                "dead_letter": False,
                "client": {"fetch.wait.max.ms": "10", "client.id": 'say "hi"\\'},
            },
            "redis": {"url": "redis://r:6379/2", "key_prefix": "mc:", "username": "app", "db": 3},
            "devices": {"ttl_secs": 86400, "index_shards": 16},
            "writer": {"max_batch": 512, "max_in_flight": 8},
            "log": {"format": "text"},
        }
    }
    values = chart.merge_values(overrides)
    toml = config_toml(render(chart, overrides))
    expected = copy.deepcopy(values["config"])
    expected["http"] = {
        "listen": "0.0.0.0:8080", "probe_listen": "0.0.0.0:8081", **values["config"]["http"],
    }
    assert toml == expected
    assert toml["kafka"]["client"]["client.id"] == 'say "hi"\\'
    assert isinstance(toml["writer"]["max_batch"], int)


def test_config_file_has_no_trailing_spaces(chart):
    """Trailing spaces would make kubectl show the file as one quoted string."""
    text = chart.render(values={}, name="mc")["metacache/templates/configmap.yaml"]
    assert [line for line in text.splitlines() if line != line.rstrip()] == []


def test_config_settings_mirror_default_toml(chart):
    """Every setting of config/default.toml is in values.config (http.listen comes from
    containerPort), with the same type; nothing the daemon does not know is rendered."""
    defaults = tomllib.loads((ROOT / "config" / "default.toml").read_text())
    rendered = config_toml(render(chart, {"config": {"redis": {"username": "u", "db": 1}}}))
    assert rendered.keys() == defaults.keys()
    for section, settings in rendered.items():
        for key, value in settings.items():
            if (section, key) in OPTIONAL_SETTINGS:
                assert isinstance(value, OPTIONAL_SETTINGS[(section, key)])
                continue
            assert key in defaults[section], f"{section}.{key} is not a metacache setting"
            assert type(value) is type(defaults[section][key]), f"{section}.{key}"
        for key in defaults[section]:
            assert key in settings, f"{section}.{key} is missing from the chart"
    values_config = chart.values["config"]
    assert values_config.keys() == defaults.keys()
    assert values_config["log"]["format"] == "json"


# --- bad values --------------------------------------------------------------------------


BAD_VALUES = {
    "replica count not a number": {"replicaCount": "two"},
    "negative replicas": {"replicaCount": -1},
    "unknown log format": {"config": {"log": {"format": "xml"}}},
    "missing image repository": {"image": {"repository": None}},
    "empty image repository": {"image": {"repository": ""}},
    "unknown setting": {"config": {"writer": {"max_bach": 5}}},
    "batch out of range": {"config": {"writer": {"max_batch": 0}}},
    "fractional batch": {"config": {"writer": {"max_batch": 10.5}}},
    "shutdown timeout too long": {"config": {"shutdown": {"timeout_secs": 7200}}},
    "bad offset reset": {"config": {"kafka": {"auto_offset_reset": "sometimes"}}},
    "bad topic name": {"config": {"kafka": {"device_topic": "device metadata"}}},
    "inline SASL password": {"config": {"kafka": {"client": {"sasl.password": "hunter2"}}}},
    "reserved librdkafka property": {"config": {"kafka": {"client": {"enable.auto.commit": "true"}}}},
    "non-string librdkafka value": {"config": {"kafka": {"client": {"fetch.wait.max.ms": 10}}}},
    "inline Redis password": {"config": {"redis": {"password": "hunter2"}}},
    "password in the Redis URL": {"config": {"redis": {"url": "redis://app:hunter2@r:6379/0"}}},
    "not a Redis URL": {"config": {"redis": {"url": "http://r:6379"}}},
    "secret without key": {"secrets": {"redisPassword": {"name": "x", "key": ""}}},
    "privileged port": {"containerPort": 80},
    "privileged probe port": {"probePort": 443},
    "probe path override": {"livenessProbe": {"httpGet": {"path": "/"}}},
    "unknown top-level key": {"replicas": 2},
    "no index shard": {"config": {"devices": {"index_shards": 0}}},
    "too many index shards": {"config": {"devices": {"index_shards": 1025}}},
    "PDB blocking drains": {"podDisruptionBudget": {"enabled": True, "maxUnavailable": 0}},
}


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_are_rejected_by_the_schema(chart, values):
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmError, match="schema"):
        chart.render(values=values, name="mc")


@pytest.mark.parametrize("values, message", [
    ({"config": {"kafka": {"metric_topic": "device-metadata"}}}, "must differ"),
    ({"config": {"writer": {"retry_initial_ms": 20000}}}, "retry_initial_ms"),
    ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
    ({"containerPort": 9000, "probePort": 9000}, "probePort"),
])
def test_inconsistent_values_fail_to_render(chart, values, message):
    chart.validate_schema(values)
    with pytest.raises(helm.HelmRenderError, match=message):
        chart.render(values=values, name="mc")


# --- the image ---------------------------------------------------------------------------


def dockerfile():
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_matches_the_chart(chart):
    text = dockerfile()
    values = chart.values
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert values["securityContext"]["runAsUser"] == 10001
    assert re.search(rf"^EXPOSE {values['containerPort']}$", text, re.M)
    assert 'ENTRYPOINT ["metacache"]' in text
    assert 'CMD ["run"]' in text
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)
    assert "cargo build --release --locked" in text
    for label in ("source", "version", "licenses", "title", "description"):
        assert f"org.opencontainers.image.{label}=" in text
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in text
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]
    assert f"ARG VERSION={cargo['version']}" in text
    assert chart.metadata["appVersion"] == cargo["version"]


def test_dockerignore_keeps_target_and_secrets_out():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "allow-list: everything is excluded first"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert included == {"Cargo.toml", "Cargo.lock", "src", "crates", "examples"}
    for pattern in ("**/*.pem", "**/*.key", "**/.env", "**/target"):
        assert pattern in lines


# --- the docs ----------------------------------------------------------------------------


def docs_values_blocks():
    """The ```yaml blocks of docs/deploy.md that start with `# metacache-values.yaml`."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"^( *)```yaml\n(.*?)^\1```", text, re.M | re.S)
    return [textwrap.dedent(body) for _, body in blocks
            if textwrap.dedent(body).startswith("# metacache-values.yaml")]


def deep_merge(base, overlay):
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_docs_values_files_install(chart):
    """The values files in docs/deploy.md render valid manifests, and the Secrets they
    name are the ones the page tells how to create."""
    blocks = docs_values_blocks()
    assert len(blocks) == 2
    values = {}
    for block in blocks:
        values = deep_merge(values, helm.values_from_yaml(block))
        docs = render(chart, values)
        validate(docs)
    env = {e["name"]: e for e in container(docs)["env"]}
    page = (ROOT / "docs" / "deploy.md").read_text()
    for name in SECRET_ENV:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert f"create secret generic {ref['name']}" in page
        assert f"--from-literal={ref['key']}=" in page
    assert config_toml(docs)["kafka"]["client"]["ssl.ca.location"] == "/etc/kafka-ca/ca.crt"


# --- dashboard and alerts ------------------------------------------------------------------

DASHBOARD = CHART / "dashboards" / "metacache.json"

# The PrometheusRule resource as the Prometheus Operator's CRD (monitoring.coreos.com/v1)
# defines it, written from the operator's API reference: kubernetes_validate ships only the
# built-in kinds, and the CRD itself is not installable offline.
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "limit": {"type": "integer"},
                            "partial_response_strategy": {"type": "string"},
                            "query_offset": DURATION,
                            "labels": STRINGS,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": DURATION,
                                        "keep_firing_for": DURATION,
                                        "labels": STRINGS,
                                        "annotations": STRINGS,
                                    },
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def github_anchors(markdown):
    """The anchors GitHub gives a page's headings."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-")
            anchors.add(slug)
    return anchors


def balanced(expr):
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    for ch in expr:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


def test_dashboard_and_alerts_are_off_by_default(chart):
    kinds = [d["kind"] for d in render(chart)]
    assert "PrometheusRule" not in kinds
    assert kinds.count("ConfigMap") == 1


def test_dashboard_configmap_carries_the_file_for_grafanas_sidecar(chart):
    docs = render(chart, {"grafanaDashboard": {"enabled": True,
                                               "annotations": {"grafana_folder": "Kafka"}}})
    validate(docs)
    maps = [d for d in docs if d["kind"] == "ConfigMap" and "metacache.json" in d.get("data", {})]
    assert len(maps) == 1
    cm = maps[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Kafka"}
    shipped = json.loads(cm["data"]["metacache.json"])
    assert shipped == json.loads(DASHBOARD.read_text())


def test_dashboard_panels_have_queries_on_the_chosen_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "metacache"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = " / ".join(p["title"].lower() for p in panels)
    # What the issue asks to see.
    for needle in ["consumed", "written, stale, dead-lettered", "rejected by reason",
                   "lag per partition", "latency", "retries", "paused", "memory",
                   "eviction policy", "ready"]:
        assert needle in titles, needle
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert balanced(expr), expr
            assert "metacache_" in expr, expr
            # Every selector is limited to the chosen jobs.
            for selector in re.findall(r"metacache_[a-z_]+\{([^}]*)\}", expr):
                assert 'job=~"$job"' in selector, expr


def test_prometheus_rule_matches_the_crd_and_every_alert_has_a_runbook(chart):
    import jsonschema

    docs = render(chart, {"prometheusRule": {"enabled": True,
                                             "runbookBaseUrl": "https://docs.example/r.md",
                                             "lagRecords": 5000, "notReadyFor": "3m"}})
    rule = kind(docs, "PrometheusRule")
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    anchors = github_anchors((ROOT / "docs" / "reliability.md").read_text())
    alerts = rule["spec"]["groups"][0]["rules"]
    names = {a["alert"] for a in alerts}
    assert names == {
        "MetacacheConsumerLagGrowing", "MetacacheDeadLetters", "MetacacheDeadLettersLost",
        "MetacacheNotReady", "MetacacheRedisErrors", "MetacachePipelineWedged",
        "MetacacheEvictionPolicyCanDropEntries",
    }
    for alert in alerts:
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], alert["alert"]
        url = annotations["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == "https://docs.example/r.md"
        assert anchor in anchors, f"{alert['alert']}: no heading #{anchor} in docs/reliability.md"
        assert balanced(alert["expr"]), alert["expr"]
        assert "metacache_" in alert["expr"]
    lag = next(a for a in alerts if a["alert"] == "MetacacheConsumerLagGrowing")
    assert "> 5000" in lag["expr"]
    ready = next(a for a in alerts if a["alert"] == "MetacacheNotReady")
    assert ready["for"] == "3m"


@pytest.mark.parametrize("values", [
    {"prometheusRule": {"enabled": True, "lagRecords": 0}},
    {"prometheusRule": {"enabled": True, "notReadyFor": "five minutes"}},
    {"prometheusRule": {"enabled": True, "runbookBaseUrl": "docs/reliability.md"}},
    {"grafanaDashboard": {"enabled": "yes"}},
])
def test_bad_dashboard_and_alert_values_are_rejected(chart, values):
    with pytest.raises(Exception):
        chart.render(values=values, name="mc", namespace="cache")


def promtool_check(tmp_path, groups):
    """`promtool check rules` on rule groups; skipped where Prometheus is not installed
    (scripts/check-deploy.sh installs it)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_promtool_accepts_the_alert_rules(chart, tmp_path):
    rule = kind(render(chart, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    out = promtool_check(tmp_path, rule["spec"]["groups"])
    assert "SUCCESS: 7 rules found" in out, out


def test_promtool_parses_every_dashboard_query(tmp_path):
    """Each panel query as a recording rule, with Grafana's variables filled in, so
    Prometheus's own parser reads it."""
    dashboard = json.loads(DASHBOARD.read_text())
    grafana = {"$__rate_interval": "1m", "$__range": "1h", "$job": ".*"}
    rules = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in grafana.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, expr
            rules.append({"record": f"dashboard:panel{panel['id']}:{target['refId']}", "expr": expr})
    out = promtool_check(tmp_path, [{"name": "dashboard", "rules": rules}])
    assert f"SUCCESS: {len(rules)} rules found" in out, out


def test_the_redis_deployment_pages_values_install(chart):
    """Each values block of docs/redis-deployments.md renders valid manifests, and the
    files its settings name are mounted where they say."""
    page = (ROOT / "docs" / "redis-deployments.md").read_text()
    blocks = [textwrap.dedent(b) for b in re.findall(r"```yaml\n(.*?)```", page, re.S)
              if b.lstrip().startswith("# values")]
    assert len(blocks) == 4
    for block in blocks:
        docs = render(chart, helm.values_from_yaml(block))
        validate(docs)
        mounts = [m["mountPath"] for m in container(docs).get("volumeMounts", [])]
        redis = config_toml(docs)["redis"]
        files = [redis.get("password_file", "")] + list(redis.get("tls", {}).values())
        for path in filter(None, files):
            assert any(path.startswith(m.rstrip("/") + "/") for m in mounts), (path, mounts)


# --- secrets mounted as files ---------------------------------------------------------------


def test_secret_files_are_mounted_read_only_and_named_in_the_config(chart):
    """secretFiles mounts each Secret as a read-only volume and points the setting that
    reads it at the file, so a rotated Secret reaches the daemon without a restart; no
    secret becomes an environment variable."""
    values = {
        "config": {"redis": {"url": "rediss://redis.cache.svc:6380/0"}},
        "secretFiles": {
            "redisPassword": {"name": "metacache-redis", "key": "redis-password"},
            "kafkaSaslPassword": {"name": "metacache-kafka", "key": "password"},
            "redisTls": {"name": "metacache-redis-tls", "caKey": "ca.crt",
                         "certKey": "tls.crt", "keyKey": "tls.key"},
        },
    }
    docs = render(chart, values)
    validate(docs)
    c = container(docs)
    assert {e["name"] for e in c["env"]} == {"METACACHE_CONFIG"}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in kind(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    expected = {
        "redis-password": ("metacache-redis", ["redis-password"]),
        "kafka-sasl-password": ("metacache-kafka", ["password"]),
        "redis-tls": ("metacache-redis-tls", ["ca.crt", "tls.crt", "tls.key"]),
    }
    for volume, (secret, keys) in expected.items():
        assert mounts[volume]["readOnly"] is True
        assert mounts[volume]["mountPath"] == f"/var/run/secrets/metacache/{volume}"
        assert volumes[volume]["secret"]["secretName"] == secret
        assert [i["key"] for i in volumes[volume]["secret"]["items"]] == keys
    toml = config_toml(docs)
    base = "/var/run/secrets/metacache"
    assert toml["redis"]["password_file"] == f"{base}/redis-password/redis-password"
    assert toml["kafka"]["client_files"] == {"sasl.password": f"{base}/kafka-sasl-password/password"}
    assert toml["redis"]["tls"] == {
        "ca_file": f"{base}/redis-tls/ca.crt",
        "client_cert_file": f"{base}/redis-tls/tls.crt",
        "client_key_file": f"{base}/redis-tls/tls.key",
    }
    # Each file the config names is inside a mount of the Secret that holds it.
    for path in [toml["redis"]["password_file"], *toml["kafka"]["client_files"].values(),
                 *toml["redis"]["tls"].values()]:
        volume, key = path.removeprefix(base + "/").split("/")
        assert key in [i["key"] for i in volumes[volume]["secret"]["items"]]


def test_no_secret_volumes_by_default_and_a_ca_only_tls_secret(chart):
    docs = render(chart)
    names = {v["name"] for v in kind(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert names == {"config", "tmp"}
    docs = render(chart, {"secretFiles": {"redisTls": {"name": "ca", "caKey": "ca.crt",
                                                       "certKey": "", "keyKey": ""}}})
    assert config_toml(docs)["redis"]["tls"] == {
        "ca_file": "/var/run/secrets/metacache/redis-tls/ca.crt",
        "client_cert_file": "", "client_key_file": "",
    }


def test_sentinel_values_render(chart):
    docs = render(chart, {
        "config": {"redis": {"mode": "sentinel", "sentinel_master": "mymaster",
                             "nodes": ["redis://s-0.s:26379", "redis://s-1.s:26379"]}},
        "secrets": {"sentinelPassword": {"name": "sentinel", "key": "password"}},
    })
    validate(docs)
    redis = config_toml(docs)["redis"]
    assert redis["mode"] == "sentinel"
    assert redis["nodes"] == ["redis://s-0.s:26379", "redis://s-1.s:26379"]
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["METACACHE__REDIS__SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "sentinel", "key": "password"}


def test_cluster_values_render(chart):
    docs = render(chart, {
        "config": {"redis": {"mode": "cluster",
                             "nodes": ["redis://rc-0.rc:6379", "redis://rc-1.rc:6379"]},
                   "devices": {"index_shards": 16}},
        "secretFiles": {"redisPassword": {"name": "redis", "key": "password"}},
    })
    validate(docs)
    config = config_toml(docs)
    assert config["redis"]["mode"] == "cluster"
    assert config["redis"]["nodes"] == ["redis://rc-0.rc:6379", "redis://rc-1.rc:6379"]
    assert config["devices"]["index_shards"] == 16
    assert config["redis"]["password_file"].startswith("/var/run/secrets/metacache/")


@pytest.mark.parametrize("values, message", [
    ({"secretFiles": {"redisPassword": {"name": "a", "key": "p"}},
      "secrets": {"redisPassword": {"name": "b", "key": "p"}}}, "Redis password one way"),
    ({"secretFiles": {"kafkaSaslPassword": {"name": "a", "key": "p"}},
      "secrets": {"kafkaSaslPassword": {"name": "b", "key": "p"}}}, "SASL password one way"),
])
def test_a_credential_is_given_one_way(chart, values, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        chart.render(values=values, name="mc")
