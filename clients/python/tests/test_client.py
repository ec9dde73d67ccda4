"""Every method, async and sync, against a cache the real daemon wrote (the README's demo:
examples/demo-events.jsonl)."""

from datetime import datetime, timezone

import pytest
import redis

from conftest import free_port, start_redis
from metacache_client import (
    AuthenticationFailed,
    CacheServiceClient,
    CacheServiceClientSync,
    CacheUnavailable,
    CorruptEntry,
    DeviceNotFound,
    InvalidArgument,
)

UTC = timezone.utc


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def check_demo_device(device):
    assert device.device_id == "dev-42"
    assert (device.datatype_id, device.datatype_name) == ("dt-7", "temperature")
    # The 10:30 update won; the 09:00 one came later and was skipped as stale.
    assert device.datatype_unit == "K"
    assert device.persist is True
    assert device.last_updated == utc("2026-11-22T10:30:00Z")
    assert device.last_updated.tzinfo is not None
    assert device.additional_properties == {"site": "plant-3"}


def test_sync_reads_what_the_daemon_wrote(cache_url):
    with CacheServiceClientSync(url=cache_url) as cache:
        check_demo_device(cache.get_device_metadata("dev-42"))
        dev44 = cache.get_device_metadata("dev-44")
        # Written with +02:00, stored and read in UTC; unknown fields kept.
        assert dev44.last_updated == utc("2026-11-22T10:05:00Z")
        assert dev44.datatype_unit is None
        assert dev44.additional_properties == {"site": "plant-1", "tags": ["entrance", "north"]}
        # Tombstoned, and refused by the decoder: not cached.
        assert cache.get_device_metadata("dev-45") is None
        assert cache.get_device_metadata("dev-46") is None
        with pytest.raises(DeviceNotFound):
            cache.get_device_metadata("dev-45", required=True)

        found = cache.get_devices(["dev-43", "dev-45", "dev-42", "dev-43"])
        assert sorted(found) == ["dev-42", "dev-43"]
        assert found["dev-43"].datatype_unit == "%"

        newest = [e.device_id for e in cache.list_devices()]
        assert newest == ["dev-42", "dev-44", "dev-43"]
        oldest = cache.list_devices(newest_first=False)
        assert [e.device_id for e in oldest] == ["dev-43", "dev-44", "dev-42"]
        assert oldest[0].last_updated == utc("2026-11-22T10:00:00Z")
        assert [e.device_id for e in cache.list_devices(limit=1, offset=1)] == ["dev-44"]
        matched = cache.list_devices(pattern="dev-4[34]", newest_first=False)
        assert [e.device_id for e in matched] == ["dev-43", "dev-44"]
        assert cache.list_devices(offset=3) == []
        with pytest.raises(InvalidArgument):
            cache.list_devices(pattern="dev-[")

        info = cache.get_cache_info()
        assert (info.total_devices, info.metric_namespaces) == (3, 3)
        assert info.oldest_device_id == "dev-43" and info.newest_device_id == "dev-42"
        assert info.newest_entry_timestamp == utc("2026-11-22T10:30:00Z")
        assert info.memory_usage_bytes and info.memory_usage_bytes > 0

        assert cache.list_namespaces() == ["billing", "default", "infra"]
        assert cache.get_metric_names("billing").names == {"disk", "mem"}
        assert "disk" in cache.get_metric_names("billing")
        # An empty namespace means default.
        assert cache.get_metric_names("").names == {"requests", "errors"}
        assert cache.get_metric_names(None) == cache.get_metric_names("default")
        assert cache.get_metric_names("scratch").names == frozenset()
        assert cache.is_valid_metric_name("billing", "disk")
        assert not cache.is_valid_metric_name("billing", "cpu")
        assert cache.are_valid_metric_names("infra", ["load1", "load15"]) == {
            "load1": True, "load15": False}
        with pytest.raises(InvalidArgument):
            cache.get_metric_names("device:x")

        health = cache.check_health()
        assert health.status == "healthy", health.message
        assert health.maxmemory_policy == "noeviction"


async def test_async_twin_returns_the_same_models(cache_url):
    sync = CacheServiceClientSync(url=cache_url)
    async with CacheServiceClient(url=cache_url) as cache:
        assert await cache.get_device_metadata("dev-42") == sync.get_device_metadata("dev-42")
        check_demo_device(await cache.get_device_metadata("dev-42"))
        assert await cache.get_devices(["dev-42", "dev-44"]) == sync.get_devices(["dev-42", "dev-44"])
        assert await cache.list_devices(pattern="dev-4?") == sync.list_devices(pattern="dev-4?")
        assert await cache.get_cache_info() == sync.get_cache_info()
        assert await cache.list_namespaces() == sync.list_namespaces()
        assert await cache.get_metric_names("billing") == sync.get_metric_names("billing")
        assert await cache.is_valid_metric_name("", "errors")
        assert await cache.are_valid_metric_names("billing", ["mem", "cpu"]) == {"mem": True, "cpu": False}
        assert (await cache.check_health()).status == "healthy"
        with pytest.raises(DeviceNotFound):
            await cache.get_device_metadata("nope", required=True)
    sync.close()


def test_a_corrupt_entry_names_its_key(cache_url, raw):
    raw.set("device:bad", "not json")
    raw.set("device:other", raw.get("device:dev-42"))
    try:
        with CacheServiceClientSync(url=cache_url) as cache:
            with pytest.raises(CorruptEntry) as e:
                cache.get_device_metadata("bad")
            assert e.value.key == "device:bad"
            with pytest.raises(CorruptEntry) as e:
                cache.get_device_metadata("other")
            assert "holds device 'dev-42'" in str(e.value)
    finally:
        raw.delete("device:bad", "device:other")


def test_eviction_policy_degrades_health(cache_url, raw):
    raw.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with CacheServiceClientSync(url=cache_url) as cache:
            health = cache.check_health()
        assert health.status == "degraded"
        assert "allkeys-lru" in health.message
    finally:
        raw.config_set("maxmemory-policy", "noeviction")


def test_unreachable_and_wrong_password_are_typed():
    closed = free_port()
    with CacheServiceClientSync(port=closed, socket_timeout=0.5, retries=1) as cache:
        with pytest.raises(CacheUnavailable):
            cache.get_device_metadata("dev-42")
        assert cache.check_health().status == "unhealthy"
    proc, port = start_redis("--requirepass", "right")
    try:
        with CacheServiceClientSync(port=port, password="wrong", retries=0) as cache:
            with pytest.raises(AuthenticationFailed):
                cache.get_device_metadata("dev-42")
        with CacheServiceClientSync(port=port, password="right") as cache:
            assert cache.get_device_metadata("dev-42") is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_passed_in_client_and_a_key_prefix(cache_url, raw):
    value = raw.get("device:dev-42")
    raw.set("app:device:dev-42", value)
    raw.zadd("app:devices", {"dev-42": 1795343400000})
    try:
        given = redis.Redis.from_url(cache_url)
        with CacheServiceClientSync(client=given, key_prefix="app:") as cache:
            check_demo_device(cache.get_device_metadata("dev-42"))
            assert [e.device_id for e in cache.list_devices()] == ["dev-42"]
        # The caller's client stays open.
        assert given.ping()
        given.close()
    finally:
        raw.delete("app:device:dev-42", "app:devices")


def test_use_http_needs_the_url():
    with pytest.raises(ValueError):
        CacheServiceClientSync(use_http=True)
