"""The layout descriptor and the sharded device index (README "Index shards"): the shard
function and the descriptor's rules; one set of devices written as one index key and as 16
shards reads the same, async and sync; the real daemon's demo cache; and the same reads
through redis-py's Redis Cluster and Sentinel clients passed in as ``client=``."""

import binascii
import json
import random
import subprocess
from datetime import datetime, timezone

import pytest
import redis
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel

from conftest import ROOT, start_redis, stop
from metacache_client import CacheServiceClient, CacheServiceClientSync, CorruptEntry
from metacache_client import layout as lay

UTC = timezone.utc
SHARDS = 16
BASE_MS = 1795341600000  # 2026-11-22T10:00:00Z


def iso(ms: int) -> str:
    """``last_updated`` in the fixed-width UTC form the daemon stores."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def stored(device_id: str, ms: int, i: int) -> str:
    """A device's normalized JSON: the named fields in their order, the others sorted by
    name, no insignificant whitespace (README "Stored form")."""
    named = {"device_id": device_id, "datatype_id": f"dt-{i % 7}",
             "datatype_name": ("temperature", "humidity", "door_open")[i % 3],
             "datatype_unit": ("K", "%", None)[i % 3], "persist": i % 2 == 0,
             "last_updated": iso(ms)}
    other = {"site": f"plant-{i % 4}"}
    if i % 5 == 0:
        other["tags"] = ["entrance", f"row-{i % 3}"]
    return json.dumps({**named, **dict(sorted(other.items()))}, separators=(",", ":"),
                      ensure_ascii=False)


def make_devices():
    """300 devices with 41 distinct timestamps, so most share their score with others and
    the id decides their order, as it does in Redis."""
    ids = ([f"dev-{i:03d}" for i in range(200)] + [f"sensor/{i}" for i in range(60)]
           + [f"température-{i}" for i in range(30)] + [f"zone[{i}]" for i in range(10)])
    out = []
    for i, device_id in enumerate(ids):
        ms = BASE_MS + ((i * 37) % 41) * 60_000 + (7 if i % 50 == 3 else 0)
        out.append((device_id, ms, stored(device_id, ms, i)))
    return out


DEVICES = make_devices()
NAMESPACES = {"billing": {"disk", "mem"}, "default": {"requests", "errors"}, "infra": {"load1", "load5"}}


def shard_key(prefix: str, device_id: str, shards: int) -> str:
    """The README's rule, written out here rather than taken from the package under test."""
    if shards == 1:
        return f"{prefix}devices"
    return f"{prefix}devices:{{{binascii.crc_hqx(device_id.encode('utf-8'), 0) % shards}}}"


def seed(conn, prefix: str, shards: int, descriptor: bool = True) -> None:
    """Writes DEVICES and NAMESPACES under ``prefix`` as the daemon lays them out: one
    command per key, so it works through a cluster client too."""
    pipe = conn.pipeline(transaction=False)
    if descriptor:
        pipe.hset(f"{prefix}metacache:layout",
                  mapping={"version": "1", "key_prefix": prefix, "index_shards": str(shards)})
    for device_id, ms, value in DEVICES:
        pipe.set(f"{prefix}device:{device_id}", value)
        pipe.zadd(shard_key(prefix, device_id, shards), {device_id: ms})
    for namespace, names in NAMESPACES.items():
        pipe.sadd(f"{prefix}{namespace}#metric_names", *sorted(names))
        pipe.sadd(f"{prefix}metric_namespaces", namespace)
    pipe.execute()


def expected_order(newest_first: bool):
    return [i for _, i in sorted(((ms, i) for i, ms, _ in DEVICES), reverse=newest_first)]


PAGES = [(1, 0), (7, 0), (7, 3), (50, 100), (100, 250), (300, 0), (400, 0), (10, 295), (10, 300), (5, 1000)]
PATTERNS = [("sensor/*", 0), ("sensor/*", 13), ("dev-1?5", 2), ("temp*", 0), ("*-0[0-4]*", 5),
            ("zone\\[*", 0), ("[^d]*", 40), ("nothing*", 0)]
LOOKUPS = ["dev-000", "dev-042", "sensor/7", "température-3", "zone[9]", "dev-199", "nope", "dev-042"]


def every_page(cache):
    """What a sync client answers to every listing the comparisons use."""
    out = []
    for newest_first in (True, False):
        for limit, offset in PAGES:
            out.append(cache.list_devices(limit, offset, None, newest_first))
        for pattern, offset in PATTERNS:
            out.append(cache.list_devices(9, offset, pattern, newest_first))
            out.append(cache.list_devices(1000, 0, pattern, newest_first))
    return out


async def every_page_async(cache):
    out = []
    for newest_first in (True, False):
        for limit, offset in PAGES:
            out.append(await cache.list_devices(limit, offset, None, newest_first))
        for pattern, offset in PATTERNS:
            out.append(await cache.list_devices(9, offset, pattern, newest_first))
            out.append(await cache.list_devices(1000, 0, pattern, newest_first))
    return out


def without_memory(info):
    return info.model_dump(exclude={"memory_usage_bytes"})


def everything(cache):
    """Every read a sync client offers, memory aside (it differs from call to call)."""
    return {
        "device": cache.get_device_metadata("température-3"),
        "missing": cache.get_device_metadata("nope"),
        "devices": cache.get_devices(LOOKUPS),
        "pages": every_page(cache),
        "info": without_memory(cache.get_cache_info()),
        "names": cache.get_metric_names("billing"),
        "default": cache.get_metric_names(""),
        "valid": cache.is_valid_metric_name("infra", "load5"),
        "several": cache.are_valid_metric_names("billing", ["disk", "cpu"]),
        "namespaces": cache.list_namespaces(),
    }


async def everything_async(cache):
    return {
        "device": await cache.get_device_metadata("température-3"),
        "missing": await cache.get_device_metadata("nope"),
        "devices": await cache.get_devices(LOOKUPS),
        "pages": await every_page_async(cache),
        "info": without_memory(await cache.get_cache_info()),
        "names": await cache.get_metric_names("billing"),
        "default": await cache.get_metric_names(""),
        "valid": await cache.is_valid_metric_name("infra", "load5"),
        "several": await cache.are_valid_metric_names("billing", ["disk", "cpu"]),
        "namespaces": await cache.list_namespaces(),
    }


# --- pure ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device_id,shards,shard", [
    ("dev-42", 16, 9), ("dev-43", 16, 8), ("sensor/7", 16, 3), ("", 16, 0), ("dev-42", 3, 2),
    ("température", 16, 0), ("123456789", 65536, 0x31C3), ("dev-42", 1, 0)])
def test_the_shard_function_meets_the_readmes_vectors(device_id, shards, shard):
    assert lay.index_shard(device_id, shards) == shard


def test_the_layout_names_every_index_key():
    one = lay.Layout("mc:")
    assert (one.index_keys, one.index_key("dev-42"), one.layout) == (
        ("mc:devices",), "mc:devices", "mc:metacache:layout")
    sharded = lay.Layout("mc:", 16)
    assert sharded.index_shards == 16
    assert (sharded.index_keys[0], sharded.index_keys[15]) == ("mc:devices:{0}", "mc:devices:{15}")
    assert sharded.index_key("dev-42") == "mc:devices:{9}"
    # Out-of-range counts are clamped, as the Rust KeyLayout does: never an empty index.
    assert lay.Layout("", 0).index_keys == ("devices",)
    assert lay.Layout("", 10**6).index_shards == lay.MAX_INDEX_SHARDS


def test_a_descriptor_is_read_from_its_hash_fields():
    key = "mc:metacache:layout"
    assert lay.descriptor(key, {}) is None
    # As redis-py returns them (bytes), and with whitespace and a sign Rust's parse accepts.
    found = lay.descriptor(key, {b"version": b"1", b"key_prefix": b"mc:", b"index_shards": b" +16 "})
    assert found == lay.Descriptor(version=1, key_prefix="mc:", index_shards=16)
    assert lay.described(lay.Layout("mc:"), {"version": "1", "key_prefix": "mc:",
                                             "index_shards": "16"}).index_keys[3] == "mc:devices:{3}"
    assert lay.described(lay.Layout("mc:", 16), {}).index_keys == ("mc:devices",)


@pytest.mark.parametrize("fields,says", [
    ({"version": "1", "key_prefix": ""}, "no `index_shards` field"),
    ({"version": "1", "key_prefix": "", "index_shards": "x"}, "`index_shards` is not a whole number"),
    ({"version": "1", "key_prefix": "", "index_shards": "1_6"}, "`index_shards` is not a whole number"),
    ({"version": "1", "key_prefix": "", "index_shards": "-1"}, "`index_shards` is not a whole number"),
    ({"version": "1", "key_prefix": "", "index_shards": "99999999999"}, "`index_shards` is not a whole number"),
    ({"version": "1", "key_prefix": "", "index_shards": "0"}, "`index_shards` is 0, outside 1..=1024"),
    ({"version": "1", "key_prefix": "", "index_shards": "1025"}, "outside 1..=1024"),
    ({"version": "2", "key_prefix": "", "index_shards": "1"}, "version 2"),
    ({"key_prefix": "", "index_shards": "1"}, "no `version` field"),
    ({"version": "one", "key_prefix": "", "index_shards": "1"}, "`version` is not a whole number"),
    ({"version": "1", "index_shards": "1"}, "no `key_prefix` field"),
])
def test_a_damaged_descriptor_names_the_field(fields, says):
    with pytest.raises(CorruptEntry) as e:
        lay.descriptor("p:metacache:layout", fields)
    assert e.value.key == "p:metacache:layout"
    assert says in e.value.reason


def test_merging_shards_gives_one_keys_order():
    rng = random.Random(18)
    pairs = [(f"d{rng.randrange(10**6)}-{'é' if n % 9 == 0 else ''}{n}", float(BASE_MS + rng.randrange(20)))
             for n in range(500)]
    shards = [sorted((p for p in pairs if lay.index_shard(p[0], 7) == k), key=lambda p: (p[1], p[0]))
              for k in range(7)]
    # One sorted set lists by score, then by the id's bytes (ZRANGE); ZREVRANGE the reverse.
    one_key = sorted(pairs, key=lambda p: (p[1], p[0].encode("utf-8")))
    assert lay.merge(shards, newest_first=False) == one_key
    assert lay.merge([list(reversed(s)) for s in shards], newest_first=True) == one_key[::-1]


def test_memory_is_one_servers_or_the_sum_over_primaries():
    assert lay.used_memory({"used_memory": 1000, "used_memory_human": "1K"}) == 1000
    assert lay.used_memory({"a:1": {"used_memory": 1}, "b:2": {"used_memory": 2}}) == 3
    assert lay.used_memory({"a:1": {"used_memory": 1}, "b:2": {"maxmemory": 0}}) is None
    assert lay.used_memory(None) is None
    assert lay.used_memory(redis.exceptions.ResponseError("NOPERM")) is None


# --- one key and 16 shards in one redis-server ----------------------------------------------


@pytest.fixture(scope="module")
def standalone():
    """One redis-server holding the same devices and catalogs three times: `one:` as a
    cache from before the descriptor (one `devices` key, no descriptor), `single:` with a
    descriptor saying 1 shard, `sharded:` with a descriptor saying 16 and the 16 keys."""
    proc, port = start_redis()
    try:
        conn = redis.Redis(port=port)
        seed(conn, "one:", 1, descriptor=False)
        seed(conn, "single:", 1)
        seed(conn, "sharded:", SHARDS)
        # Every shard holds some devices, and the shards together hold each device once.
        sizes = [conn.zcard(f"sharded:devices:{{{k}}}") for k in range(SHARDS)]
        assert min(sizes) > 0 and sum(sizes) == len(DEVICES)
        assert not conn.exists("sharded:devices")
        conn.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


def test_listing_is_the_expected_order(standalone):
    with CacheServiceClientSync(url=standalone, key_prefix="sharded:") as cache:
        for newest_first in (True, False):
            listed = [e.device_id for e in cache.list_devices(1000, 0, None, newest_first)]
            assert listed == expected_order(newest_first)
        assert cache.get_cache_info().total_devices == len(DEVICES)


@pytest.mark.parametrize("other", ["single:", "sharded:"])
def test_one_key_and_sixteen_shards_read_the_same_sync(standalone, other):
    with CacheServiceClientSync(url=standalone, key_prefix="one:") as one, \
            CacheServiceClientSync(url=standalone, key_prefix=other) as sharded:
        assert everything(sharded) == everything(one)
        assert sharded.get_cache_info().memory_usage_bytes > 0


async def test_one_key_and_sixteen_shards_read_the_same_async(standalone):
    sync = CacheServiceClientSync(url=standalone, key_prefix="one:")
    async with CacheServiceClient(url=standalone, key_prefix="sharded:") as sharded:
        assert await everything_async(sharded) == everything(sync)
        assert (await sharded.get_cache_info()).memory_usage_bytes > 0
    sync.close()


async def test_a_pattern_pages_through_the_merged_shards_in_chunks(standalone, monkeypatch):
    # Chunks far smaller than the index, so a filtered page spans several round trips.
    monkeypatch.setattr(lay, "SCAN_CHUNK", 7)
    with CacheServiceClientSync(url=standalone, key_prefix="one:") as one:
        expected = every_page(one)
    with CacheServiceClientSync(url=standalone, key_prefix="sharded:") as sharded:
        assert every_page(sharded) == expected
    async with CacheServiceClient(url=standalone, key_prefix="sharded:") as sharded:
        assert await every_page_async(sharded) == expected


async def test_a_damaged_descriptor_raises_corrupt_entry_naming_the_field(standalone):
    conn = redis.Redis.from_url(standalone)
    conn.hset("broken:metacache:layout", mapping={"version": "1", "key_prefix": "broken:"})
    conn.set("broken:device:dev-000", DEVICES[0][2])
    conn.set("wrongtype:metacache:layout", "16")
    try:
        with CacheServiceClientSync(url=standalone, key_prefix="broken:") as cache:
            for call in (cache.list_devices, cache.get_cache_info):
                with pytest.raises(CorruptEntry) as e:
                    call()
                assert e.value.key == "broken:metacache:layout"
                assert "no `index_shards` field" in e.value.reason
            # Reads that do not need the index do not need the descriptor either.
            assert cache.get_device_metadata("dev-000").device_id == "dev-000"
        async with CacheServiceClient(url=standalone, key_prefix="broken:") as cache:
            with pytest.raises(CorruptEntry) as e:
                await cache.list_devices(pattern="dev-*")
            assert "`index_shards`" in str(e.value)
        conn.hset("broken:metacache:layout", "index_shards", "2000")
        with CacheServiceClientSync(url=standalone, key_prefix="broken:") as cache:
            with pytest.raises(CorruptEntry, match="outside 1..=1024"):
                cache.get_cache_info()
        with CacheServiceClientSync(url=standalone, key_prefix="wrongtype:") as cache:
            with pytest.raises(CorruptEntry) as e:
                cache.list_devices()
            assert e.value.key == "wrongtype:metacache:layout"
    finally:
        conn.delete("broken:metacache:layout", "broken:device:dev-000", "wrongtype:metacache:layout")
        conn.close()


async def test_the_descriptor_is_read_again_once_the_reading_is_old(standalone, monkeypatch):
    """A reader started before the first daemon follows the descriptor the daemon writes."""
    conn = redis.Redis.from_url(standalone)
    seed(conn, "late:", SHARDS, descriptor=False)
    try:
        sync = CacheServiceClientSync(url=standalone, key_prefix="late:")
        async with CacheServiceClient(url=standalone, key_prefix="late:") as cache:
            # No descriptor: one `late:devices` key, which this cache does not have.
            assert sync.list_devices() == [] and await cache.list_devices() == []
            conn.hset("late:metacache:layout",
                      mapping={"version": "1", "key_prefix": "late:", "index_shards": str(SHARDS)})
            # Within LAYOUT_REFRESH_SECS the reading stands.
            assert sync.get_cache_info().total_devices == 0
            assert (await cache.get_cache_info()).total_devices == 0
            monkeypatch.setattr(lay, "LAYOUT_REFRESH_SECS", 0.0)
            assert sync.get_cache_info().total_devices == len(DEVICES)
            assert (await cache.get_cache_info()).total_devices == len(DEVICES)
            assert [e.device_id for e in await cache.list_devices(1000)] == expected_order(True)
        sync.close()
    finally:
        conn.delete(*conn.keys("late:*"))
        conn.close()


# --- the real daemon --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded_demo_url(daemon_binary):
    """The demo's cache written by the real daemon with 16 index shards, into a fresh
    redis-server: `metacache demo --once --index-shards 16`. (The demo builds its settings
    from the defaults, so METACACHE__DEVICES__INDEX_SHARDS does not reach it.)"""
    proc, port = start_redis()
    try:
        url = f"redis://127.0.0.1:{port}/0"
        command = [str(daemon_binary), "demo", "--once", "--redis-url", url, "--index-shards", str(SHARDS)]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert run.returncode == 0, run.stdout + run.stderr
        with redis.Redis(port=port) as conn:
            written = conn.hgetall("metacache:layout")
            assert written.get(b"index_shards") == str(SHARDS).encode(), written
            assert not conn.exists("devices")
        yield url
    finally:
        stop(proc)


def test_the_daemons_sharded_demo_cache_reads_as_the_one_key_one(cache_url, sharded_demo_url):
    with CacheServiceClientSync(url=cache_url) as one, CacheServiceClientSync(url=sharded_demo_url) as sharded:
        ids = ["dev-42", "dev-43", "dev-44", "dev-45", "dev-46"]
        assert sharded.get_devices(ids) == one.get_devices(ids)
        for newest_first in (True, False):
            for limit, offset in [(100, 0), (1, 0), (1, 1), (2, 1), (5, 3)]:
                assert sharded.list_devices(limit, offset, None, newest_first) == \
                    one.list_devices(limit, offset, None, newest_first)
            assert sharded.list_devices(10, 0, "dev-4[34]", newest_first) == \
                one.list_devices(10, 0, "dev-4[34]", newest_first)
        assert without_memory(sharded.get_cache_info()) == without_memory(one.get_cache_info())
        assert sharded.list_namespaces() == one.list_namespaces()


# --- Redis Cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(cluster_ports):
    """The cluster, seeded through a RedisCluster client like the standalone server: `one:`
    without a descriptor, `sharded:` with 16 shards. Yields the first node's port."""
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster_ports[0], socket_timeout=5)
    try:
        seed(client, "one:", 1, descriptor=False)
        seed(client, "sharded:", SHARDS)
        # The shards really are spread: every node holds some of them.
        nodes = {client.get_node_from_key(f"sharded:devices:{{{k}}}").name for k in range(SHARDS)}
        assert len(nodes) == len(cluster_ports), nodes
    finally:
        client.close()
    yield cluster_ports[0]


def nodes_of(client, prefix, ids):
    return {client.get_node_from_key(f"{prefix}device:{i}").name for i in ids}


@pytest.mark.parametrize("prefix", ["sharded:", "one:"])
def test_a_sync_cluster_client_reads_what_a_standalone_server_does(standalone, cluster, prefix):
    given = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster, socket_timeout=5)
    try:
        # get_devices asks for ids in slots of every node: one MGET would be refused.
        assert len(nodes_of(given, prefix, LOOKUPS)) == 3
        with CacheServiceClientSync(url=standalone, key_prefix=prefix) as copy, \
                CacheServiceClientSync(client=given, key_prefix=prefix) as cache:
            assert everything(cache) == everything(copy)
            assert len(cache.get_devices(LOOKUPS)) == len(set(LOOKUPS)) - 1
            info = cache.get_cache_info()
            # The sum over the three primaries: more than any one of them uses.
            each = given.info("memory", target_nodes=redis.cluster.RedisCluster.PRIMARIES)
            assert info.memory_usage_bytes > max(int(n["used_memory"]) for n in each.values())
            assert cache.check_health().status == "healthy"
        assert given.ping()  # the caller's client stays open
    finally:
        given.close()


@pytest.mark.parametrize("prefix", ["sharded:", "one:"])
async def test_an_async_cluster_client_reads_what_a_standalone_server_does(standalone, cluster, prefix):
    given = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster, socket_timeout=5)
    try:
        with CacheServiceClientSync(url=standalone, key_prefix=prefix) as copy:
            expected = everything(copy)
        async with CacheServiceClient(client=given, key_prefix=prefix) as cache:
            assert await everything_async(cache) == expected
            assert (await cache.get_cache_info()).memory_usage_bytes > 0
            assert (await cache.check_health()).status == "healthy"
        assert await given.ping()
    finally:
        await given.aclose()


# --- Sentinel ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel(sentinel_ports):
    """The primary seeded with 16 shards and a descriptor; yields the sentinel's port."""
    primary_port, replica_port, sentinel_port = sentinel_ports
    with redis.Redis(port=primary_port) as primary:
        seed(primary, "sharded:", SHARDS)
    yield sentinel_port


def test_a_sync_sentinel_client_reads_what_a_standalone_server_does(standalone, sentinel):
    sentinels = redis.sentinel.Sentinel([("127.0.0.1", sentinel)], socket_timeout=5)
    given = sentinels.master_for("mymaster", socket_timeout=5)
    try:
        with CacheServiceClientSync(url=standalone, key_prefix="sharded:") as copy, \
                CacheServiceClientSync(client=given, key_prefix="sharded:") as cache:
            assert everything(cache) == everything(copy)
            assert cache.get_cache_info().memory_usage_bytes > 0
            assert cache.check_health().status == "healthy"
    finally:
        given.close()
        for s in sentinels.sentinels:
            s.close()


async def test_an_async_sentinel_client_reads_what_a_standalone_server_does(standalone, sentinel):
    sentinels = redis.asyncio.sentinel.Sentinel([("127.0.0.1", sentinel)], socket_timeout=5)
    given = sentinels.master_for("mymaster", socket_timeout=5)
    try:
        with CacheServiceClientSync(url=standalone, key_prefix="sharded:") as copy:
            expected = everything(copy)
        async with CacheServiceClient(client=given, key_prefix="sharded:") as cache:
            assert await everything_async(cache) == expected
            assert (await cache.check_health()).status == "healthy"
    finally:
        await given.aclose()
        for s in sentinels.sentinels:
            await s.aclose()
