"""The publish helper: what it sends, the real daemon (through librdkafka's mock Kafka)
writes; what the contract refuses, it refuses before sending."""

import filecmp
import time
from datetime import datetime, timezone

import pytest

from conftest import ROOT
from metacache_client import CacheServiceClientSync, DeviceMetadata
from metacache_client.publish import InvalidEvent, Publisher, device_event, metric_event


def test_the_packaged_schemas_are_the_contracts():
    packaged = ROOT / "clients" / "python" / "src" / "metacache_client" / "schemas"
    for schema in (ROOT / "contract" / "schemas").glob("*.json"):
        assert filecmp.cmp(schema, packaged / schema.name, shallow=False), schema.name


@pytest.mark.parametrize("value,field", [
    ({"device_id": "d", "datatype_name": "n", "persist": True,
      "last_updated": "2026-11-22T10:00:00Z"}, "datatype_id"),
    ({"device_id": " d", "datatype_id": "t", "datatype_name": "n", "persist": True,
      "last_updated": "2026-11-22T10:00:00Z"}, "device_id"),
    ({"device_id": "d", "datatype_id": "t", "datatype_name": "n", "persist": "yes",
      "last_updated": "2026-11-22T10:00:00Z"}, "persist"),
    ({"device_id": "d", "datatype_id": "t", "datatype_name": "n", "persist": True,
      "last_updated": "yesterday"}, "last_updated"),
])
def test_invalid_devices_are_refused_naming_the_field(value, field):
    with pytest.raises(InvalidEvent) as e:
        device_event(value)
    assert e.value.field == field


def test_invalid_catalog_events_are_refused():
    with pytest.raises(InvalidEvent) as e:
        metric_event("rename", "billing", ["a"])
    assert e.value.field == "op"
    with pytest.raises(InvalidEvent) as e:
        metric_event("add", "device:x", ["a"])
    assert e.value.field == "namespace"
    with pytest.raises(InvalidEvent):
        metric_event("add", "billing", ["ok", "bad\u200bname"])


def wait_for(check, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("not in time")


def test_published_events_land_through_the_daemon(pipeline):
    bootstrap, url = pipeline
    publisher = Publisher({"bootstrap.servers": bootstrap})
    device = DeviceMetadata(device_id="py-1", datatype_id="dt-1", datatype_name="flow",
                            datatype_unit=None, persist=True,
                            last_updated=datetime(2026, 11, 22, 10, 0, 0, 250000, tzinfo=timezone.utc),
                            site="plant-9")
    publisher.publish_device(device)
    publisher.publish_device({"device_id": "py-2", "datatype_id": "dt-2", "datatype_name": "x",
                              "persist": False, "last_updated": "2026-11-22T12:00:00+02:00"})
    publisher.publish_metrics("replace", "", ["requests", "errors"])
    publisher.publish_metrics("add", "billing", ["disk"])
    publisher.publish_device({"device_id": "py-3", "datatype_id": "dt-3", "datatype_name": "y",
                              "persist": False, "last_updated": "2026-11-22T12:00:00Z"})
    assert publisher.flush() == 0
    with CacheServiceClientSync(url=url) as cache:
        wait_for(lambda: cache.get_device_metadata("py-3") is not None
                 and cache.is_valid_metric_name("billing", "disk")
                 and cache.is_valid_metric_name("", "errors"))
        assert cache.get_device_metadata("py-1") == device
        assert cache.get_device_metadata("py-2").last_updated == datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
        # The tombstone is keyed by the id: it deletes what was written.
        publisher.delete_device("py-3")
        assert publisher.flush() == 0
        wait_for(lambda: cache.get_device_metadata("py-3") is None)
        assert cache.list_namespaces() == ["billing", "default"]
