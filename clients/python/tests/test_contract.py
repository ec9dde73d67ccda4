"""The contract as files (contract/): the JSON Schemas agree with the daemon's decoder on
every fixture event, and the Python client reads the fixture's Redis state as the
contract says. The Rust tests run the same fixture through the real daemon
(tests/contract_fixtures.rs)."""

import json

import jsonschema
import pytest
import redis

from conftest import ROOT, start_redis
from metacache_client import CacheServiceClientSync, DeviceMetadata

CONTRACT = ROOT / "contract"
FIXTURE = json.loads((CONTRACT / "fixtures" / "demo.json").read_text())
SCHEMAS = {name: json.loads((CONTRACT / "schemas" / f"{name}.schema.json").read_text())
           for name in ("device-event", "metric-event", "device-stored")}
# Rejections no schema of a value can express: they are about the Kafka key, or the bytes
# are not JSON at all.
NOT_IN_SCHEMA = {"key_mismatch", "missing_key", "invalid_json", "too_large", "invalid_utf8"}


def check(schema, value):
    jsonschema.Draft202012Validator(SCHEMAS[schema]).validate(value)


@pytest.mark.parametrize("index", range(len(FIXTURE["events"])))
def test_the_schemas_agree_with_the_decoder(index):
    event = FIXTURE["events"][index]
    rejected = {r["event"]: r for r in FIXTURE["rejections"]}.get(index)
    if "raw" in event or event["value"] is None:
        return  # not JSON, or a tombstone: nothing for a value schema to say
    schema = "device-event" if event["topic"] == "devices" else "metric-event"
    if rejected is None:
        check(schema, event["value"])
    elif rejected["reason"] not in NOT_IN_SCHEMA:
        with pytest.raises(jsonschema.ValidationError):
            check(schema, event["value"])


@pytest.fixture(scope="module")
def fixture_cache():
    """A redis-server holding exactly the fixture's expected state, written with plain
    commands (the layout, not the daemon)."""
    proc, port = start_redis()
    conn = redis.Redis(port=port)
    state = FIXTURE["redis"]
    for device_id, value in state["device"].items():
        conn.set(f"device:{device_id}", value)
    conn.zadd("devices", state["devices"])
    for namespace, names in state["metric_names"].items():
        conn.sadd(f"{namespace}#metric_names", *names)
    conn.sadd("metric_namespaces", *state["metric_namespaces"])
    conn.close()
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


def test_stored_devices_match_the_stored_schema_and_the_model(fixture_cache):
    with CacheServiceClientSync(url=fixture_cache) as cache:
        for device_id, stored in FIXTURE["redis"]["device"].items():
            value = json.loads(stored)
            check("device-stored", value)
            device = cache.get_device_metadata(device_id)
            assert device == DeviceMetadata.model_validate(value)
            assert device.device_id == device_id
            # The named fields come first, in the contract's order.
            assert list(value)[:6] == ["device_id", "datatype_id", "datatype_name",
                                       "datatype_unit", "persist", "last_updated"]
            extras = {k: v for k, v in value.items() if k not in list(value)[:6]}
            assert device.additional_properties == extras
            assert list(extras) == sorted(extras), "unknown fields in name order"


def test_the_client_reads_the_fixture_state(fixture_cache):
    state = FIXTURE["redis"]
    with CacheServiceClientSync(url=fixture_cache) as cache:
        by_score = sorted(state["devices"], key=lambda d: (state["devices"][d], d))
        assert [e.device_id for e in cache.list_devices(newest_first=False)] == by_score
        assert cache.list_namespaces() == sorted(state["metric_namespaces"])
        for namespace in state["metric_namespaces"]:
            assert cache.get_metric_names(namespace).names == set(state["metric_names"].get(namespace, []))
        info = cache.get_cache_info()
        assert info.total_devices == len(state["devices"])
        assert info.oldest_device_id == by_score[0] and info.newest_device_id == by_score[-1]
