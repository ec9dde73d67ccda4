"""The clients: ``CacheServiceClient`` (asyncio, ``async with``) and its twin
``CacheServiceClientSync`` (plain calls), with the same methods, models and errors. Both
read Redis with redis-py; any redis-py client may be passed in (Cluster, Sentinel's
``master_for``).

Calls that read the device index first learn how it is split from the layout descriptor
(``metacache:layout``), at the first such call and again once the reading is older than
``layout.LAYOUT_REFRESH_SECS``; the other calls do not need it."""

import time
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Optional, Sequence

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from . import layout as lay
from .errors import (
    AuthenticationFailed,
    CacheServiceError,
    CacheUnavailable,
    CorruptEntry,
    DeviceNotFound,
)
from .models import CacheInfo, DeviceEntry, DeviceMetadata, HealthStatus, MetricNames

# A PING slower than this makes check_health say degraded (as the Rust client does).
SLOW_PING_MS = 250.0

_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

# Cluster clients route each command by its key, so a multi-key MGET across slots fails
# there (CROSSSLOT) and INFO has no single node to go to: both are sent another way.
_CLUSTERS = (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster)
# What asking every primary for INFO may raise; the memory is then unknown, not an error.
_INFO_FAILURES = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)


def _translate(e: Exception) -> CacheServiceError:
    if isinstance(e, (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError)):
        return AuthenticationFailed(str(e))
    if isinstance(e, redis.exceptions.ResponseError) and str(e).startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
        return AuthenticationFailed(str(e))
    if isinstance(e, _TRANSIENT):
        return CacheUnavailable(str(e) or type(e).__name__)
    return CacheServiceError(str(e))


@contextmanager
def _errors(key: Optional[str] = None):
    """redis-py's errors as the client's; with ``key``, a WRONGTYPE reply is that key
    holding something the layout does not put there."""
    try:
        yield
    except CacheServiceError:
        raise
    except redis.exceptions.RedisError as e:
        if key is not None and isinstance(e, redis.exceptions.ResponseError) and str(e).startswith("WRONGTYPE"):
            raise CorruptEntry(key, str(e)) from e
        raise _translate(e) from e


def _stale(read_at: Optional[float]) -> bool:
    return read_at is None or time.monotonic() - read_at >= lay.LAYOUT_REFRESH_SECS


def _options(
    host: str,
    port: int,
    password: Optional[str],
    db: int,
    socket_timeout: Optional[float],
    retries: int,
    retry_class: Any = Retry,
) -> Dict[str, Any]:
    return {
        "host": host,
        "port": port,
        "password": password,
        "db": db,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        # redis-py retries connection errors and timeouts with this backoff.
        "retry": retry_class(ExponentialBackoff(cap=2.0, base=0.05), retries),
        "retry_on_error": list(_TRANSIENT),
    }


class _Settings:
    """The constructor arguments both clients take."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        password: Optional[str] = None,
        db: int = 0,
        socket_timeout: Optional[float] = 5.0,
        connection_pool: Any = None,
        url: Optional[str] = None,
        key_prefix: str = "",
        use_http: bool = False,
        http_url: Optional[str] = None,
        http_timeout: float = 5.0,
        http_auth_token: Optional[str] = None,
        retries: int = 3,
        client: Any = None,
    ) -> None:
        if use_http and not http_url:
            raise ValueError("use_http=True needs http_url (the daemon's http.listen address)")
        self.use_http = use_http
        self.layout = lay.Layout(key_prefix)
        self.host, self.port, self.password, self.db = host, port, password, db
        self.socket_timeout, self.connection_pool, self.url = socket_timeout, connection_pool, url
        self.retries, self.client = retries, client
        self.http_url, self.http_timeout, self.http_auth_token = http_url, http_timeout, http_auth_token


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _queue_cache_info(pipe: Any, layout: lay.Layout, with_info: bool) -> None:
    """The commands `get_cache_info` sends, for both clients: per index shard its size and
    both ends, the namespace count, and `INFO memory` unless on a cluster (there INFO goes
    to every primary on its own)."""
    for key in layout.index_keys:
        pipe.zcard(key)
        pipe.zrange(key, 0, 0, withscores=True)
        pipe.zrevrange(key, 0, 0, withscores=True)
    pipe.scard(layout.metric_namespaces)
    if with_info:
        pipe.info("memory")


def _cache_info(layout: lay.Layout, replies: List[Any], info: Any) -> CacheInfo:
    """`get_cache_info`'s answer from the replies of ``_queue_cache_info``'s commands."""
    for r in replies:
        if isinstance(r, Exception):
            raise _translate(r)
    return lay.cache_info(layout, replies, lay.used_memory(info))


def _health(latency_ms: Optional[float], error: Optional[Exception], policy: Any) -> HealthStatus:
    if error is not None:
        return HealthStatus(status="unhealthy", message=f"PING failed: {error}", timestamp=_now())
    status = "healthy"
    message = f"PING {latency_ms:.1f} ms"
    if latency_ms is not None and latency_ms > SLOW_PING_MS:
        status = "degraded"
        message += f" (slower than {SLOW_PING_MS:.0f} ms)"
    name = None
    if isinstance(policy, dict):
        name = policy.get("maxmemory-policy")
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if name and (name.startswith("allkeys-") or name.startswith("volatile-")):
        status = "degraded"
        message += f"; maxmemory-policy {name} lets Redis evict metacache's keys when memory runs out (use noeviction)"
    elif name:
        message += f"; maxmemory-policy {name}"
    else:
        message += "; maxmemory-policy unknown (CONFIG GET not allowed or not reported)"
    return HealthStatus(status=status, message=message, timestamp=_now(),
                        latency_ms=latency_ms, maxmemory_policy=name)


class _RedisAsync:
    """The async reads over redis-py."""

    def __init__(self, s: "_Settings") -> None:
        self._s = s
        if s.client is not None:
            self._redis = s.client
        elif s.connection_pool is not None:
            self._redis = redis.asyncio.Redis(connection_pool=s.connection_pool)
        elif s.url is not None:
            self._redis = redis.asyncio.Redis.from_url(
                s.url, socket_timeout=s.socket_timeout, socket_connect_timeout=s.socket_timeout,
                retry=AsyncRetry(ExponentialBackoff(cap=2.0, base=0.05), s.retries),
                retry_on_error=list(_TRANSIENT))
        else:
            self._redis = redis.asyncio.Redis(**_options(s.host, s.port, s.password, s.db,
                                                         s.socket_timeout, s.retries, AsyncRetry))
        self._layout = s.layout
        self._layout_read_at: Optional[float] = None
        self._cluster = isinstance(self._redis, _CLUSTERS)

    async def close(self) -> None:
        if self._s.client is None:
            await self._redis.aclose() if hasattr(self._redis, "aclose") else await self._redis.close()

    async def _index_layout(self) -> lay.Layout:
        """The layout for a call that reads the device index, read from the descriptor when
        the last reading is missing or too old to rely on."""
        if not _stale(self._layout_read_at):
            return self._layout
        key = self._layout.layout
        with _errors(key):
            fields = await self._redis.hgetall(key)
        self._layout = lay.described(self._layout, fields)
        self._layout_read_at = time.monotonic()
        return self._layout

    async def get_device_metadata(self, device_id: str, required: bool = False) -> Optional[DeviceMetadata]:
        """The device, or None when it is not cached (``required=True``: DeviceNotFound)."""
        key = self._layout.device(device_id)
        with _errors():
            raw = await self._redis.get(key)
        if raw is None:
            if required:
                raise DeviceNotFound(device_id)
            return None
        return lay.device(key, device_id, raw)

    async def get_devices(self, device_ids: Sequence[str]) -> Dict[str, DeviceMetadata]:
        """The cached ones among ``device_ids``, in one MGET (on a cluster, one per slot,
        sent together); missing ids are left out."""
        ids = list(dict.fromkeys(device_ids))
        if not ids:
            return {}
        keys = [self._layout.device(i) for i in ids]
        with _errors():
            if self._cluster:
                values = await self._redis.mget_nonatomic(keys)
            else:
                values = await self._redis.mget(keys)
        return {i: lay.device(k, i, v) for i, k, v in zip(ids, keys, values) if v is not None}

    async def list_devices(self, limit: int = 100, offset: int = 0, pattern: Optional[str] = None,
                           newest_first: bool = True) -> List[DeviceEntry]:
        """A page of the device index (all its shards, merged), newest first by default;
        ``pattern`` is a Redis-style glob on the id."""
        lay.check_page(limit, offset)
        glob = lay.pattern(pattern)
        if limit == 0:
            return []
        # One reading for the whole call, so a long filtered walk never mixes two layouts.
        layout = await self._index_layout()
        if glob is None:
            return await self._range(layout, newest_first, offset, limit)
        page: List[DeviceEntry] = []
        skip, start = offset, 0
        while True:
            chunk = await self._range(layout, newest_first, start, lay.SCAN_CHUNK)
            for entry in chunk:
                if not glob.matches(entry.device_id):
                    continue
                if skip:
                    skip -= 1
                    continue
                page.append(entry)
                if len(page) == limit:
                    return page
            if len(chunk) < lay.SCAN_CHUNK:
                return page
            start += lay.SCAN_CHUNK

    async def _range(self, layout: lay.Layout, newest_first: bool, start: int,
                     count: int) -> List[DeviceEntry]:
        """Up to ``count`` entries from rank ``start``: one command for one index key, one
        pipeline over the shards for more (merged by ``lay.index_page``)."""
        first, last = lay.range_bounds(layout, start, count)
        with _errors():
            if layout.index_shards == 1:
                read = self._redis.zrevrange if newest_first else self._redis.zrange
                replies = [await read(layout.index_keys[0], first, last, withscores=True)]
            else:
                pipe = self._redis.pipeline(transaction=False)
                for key in layout.index_keys:
                    read = pipe.zrevrange if newest_first else pipe.zrange
                    read(key, first, last, withscores=True)
                replies = await pipe.execute()
        return lay.index_page(layout, replies, newest_first, start, count)

    async def get_cache_info(self) -> CacheInfo:
        """Counts, the oldest and newest index entries and Redis's memory, in one round trip
        (two on a cluster: INFO goes to every primary on its own)."""
        layout = await self._index_layout()
        with _errors():
            pipe = self._redis.pipeline(transaction=False)
            _queue_cache_info(pipe, layout, with_info=not self._cluster)
            replies = await pipe.execute(raise_on_error=False)
        if self._cluster:
            try:
                info = await self._redis.info("memory", target_nodes=redis.asyncio.cluster.RedisCluster.PRIMARIES)
            except _INFO_FAILURES:
                info = None
        else:
            info = replies.pop()
        return _cache_info(layout, replies, info)

    async def check_health(self) -> HealthStatus:
        """PING (and its latency), then the eviction policy. Never raises."""
        started = time.perf_counter()
        try:
            await self._redis.ping()
        except Exception as e:  # the verdict, not an error
            return _health(None, e, None)
        latency = (time.perf_counter() - started) * 1000.0
        try:
            policy = await self._redis.config_get("maxmemory-policy")
        except Exception:
            policy = None
        return _health(latency, None, policy)

    async def get_metric_names(self, namespace: Optional[str] = None) -> MetricNames:
        """The namespace's valid metric names (empty for an unknown namespace)."""
        key = self._layout.metric_names(namespace)
        with _errors():
            members = await self._redis.smembers(key)
        return lay.names(namespace, members, key)

    async def is_valid_metric_name(self, namespace: Optional[str], name: str) -> bool:
        key = self._layout.metric_names(namespace)
        with _errors():
            return bool(await self._redis.sismember(key, name))

    async def are_valid_metric_names(self, namespace: Optional[str], names: Sequence[str]) -> Dict[str, bool]:
        """Each name's validity, in one SMISMEMBER."""
        names = list(names)
        if not names:
            return {}
        key = self._layout.metric_names(namespace)
        with _errors():
            found = await self._redis.smismember(key, names)
        return {n: bool(f) for n, f in zip(names, found)}

    async def list_namespaces(self) -> List[str]:
        """Every namespace in ``metric_namespaces``, sorted."""
        with _errors():
            members = await self._redis.smembers(self._layout.metric_namespaces)
        return sorted(lay.text(self._layout.metric_namespaces, m) for m in members)


class _RedisSync:
    """The sync reads over redis-py."""

    def __init__(self, s: "_Settings") -> None:
        self._s = s
        if s.client is not None:
            self._redis = s.client
        elif s.connection_pool is not None:
            self._redis = redis.Redis(connection_pool=s.connection_pool)
        elif s.url is not None:
            self._redis = redis.Redis.from_url(
                s.url, socket_timeout=s.socket_timeout, socket_connect_timeout=s.socket_timeout,
                retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), s.retries),
                retry_on_error=list(_TRANSIENT))
        else:
            self._redis = redis.Redis(**_options(s.host, s.port, s.password, s.db,
                                                 s.socket_timeout, s.retries))
        self._layout = s.layout
        self._layout_read_at: Optional[float] = None
        self._cluster = isinstance(self._redis, _CLUSTERS)

    def close(self) -> None:
        if self._s.client is None:
            self._redis.close()

    def _index_layout(self) -> lay.Layout:
        if not _stale(self._layout_read_at):
            return self._layout
        key = self._layout.layout
        with _errors(key):
            fields = self._redis.hgetall(key)
        self._layout = lay.described(self._layout, fields)
        self._layout_read_at = time.monotonic()
        return self._layout

    def get_device_metadata(self, device_id: str, required: bool = False) -> Optional[DeviceMetadata]:
        key = self._layout.device(device_id)
        with _errors():
            raw = self._redis.get(key)
        if raw is None:
            if required:
                raise DeviceNotFound(device_id)
            return None
        return lay.device(key, device_id, raw)

    def get_devices(self, device_ids: Sequence[str]) -> Dict[str, DeviceMetadata]:
        ids = list(dict.fromkeys(device_ids))
        if not ids:
            return {}
        keys = [self._layout.device(i) for i in ids]
        with _errors():
            values = self._redis.mget_nonatomic(keys) if self._cluster else self._redis.mget(keys)
        return {i: lay.device(k, i, v) for i, k, v in zip(ids, keys, values) if v is not None}

    def list_devices(self, limit: int = 100, offset: int = 0, pattern: Optional[str] = None,
                     newest_first: bool = True) -> List[DeviceEntry]:
        lay.check_page(limit, offset)
        glob = lay.pattern(pattern)
        if limit == 0:
            return []
        layout = self._index_layout()
        if glob is None:
            return self._range(layout, newest_first, offset, limit)
        page: List[DeviceEntry] = []
        skip, start = offset, 0
        while True:
            chunk = self._range(layout, newest_first, start, lay.SCAN_CHUNK)
            for entry in chunk:
                if not glob.matches(entry.device_id):
                    continue
                if skip:
                    skip -= 1
                    continue
                page.append(entry)
                if len(page) == limit:
                    return page
            if len(chunk) < lay.SCAN_CHUNK:
                return page
            start += lay.SCAN_CHUNK

    def _range(self, layout: lay.Layout, newest_first: bool, start: int, count: int) -> List[DeviceEntry]:
        first, last = lay.range_bounds(layout, start, count)
        with _errors():
            if layout.index_shards == 1:
                read = self._redis.zrevrange if newest_first else self._redis.zrange
                replies = [read(layout.index_keys[0], first, last, withscores=True)]
            else:
                pipe = self._redis.pipeline(transaction=False)
                for key in layout.index_keys:
                    read = pipe.zrevrange if newest_first else pipe.zrange
                    read(key, first, last, withscores=True)
                replies = pipe.execute()
        return lay.index_page(layout, replies, newest_first, start, count)

    def get_cache_info(self) -> CacheInfo:
        layout = self._index_layout()
        with _errors():
            pipe = self._redis.pipeline(transaction=False)
            _queue_cache_info(pipe, layout, with_info=not self._cluster)
            replies = pipe.execute(raise_on_error=False)
        if self._cluster:
            try:
                info = self._redis.info("memory", target_nodes=redis.cluster.RedisCluster.PRIMARIES)
            except _INFO_FAILURES:
                info = None
        else:
            info = replies.pop()
        return _cache_info(layout, replies, info)

    def check_health(self) -> HealthStatus:
        started = time.perf_counter()
        try:
            self._redis.ping()
        except Exception as e:  # the verdict, not an error
            return _health(None, e, None)
        latency = (time.perf_counter() - started) * 1000.0
        try:
            policy = self._redis.config_get("maxmemory-policy")
        except Exception:
            policy = None
        return _health(latency, None, policy)

    def get_metric_names(self, namespace: Optional[str] = None) -> MetricNames:
        key = self._layout.metric_names(namespace)
        with _errors():
            members = self._redis.smembers(key)
        return lay.names(namespace, members, key)

    def is_valid_metric_name(self, namespace: Optional[str], name: str) -> bool:
        key = self._layout.metric_names(namespace)
        with _errors():
            return bool(self._redis.sismember(key, name))

    def are_valid_metric_names(self, namespace: Optional[str], names: Sequence[str]) -> Dict[str, bool]:
        names = list(names)
        if not names:
            return {}
        key = self._layout.metric_names(namespace)
        with _errors():
            found = self._redis.smismember(key, names)
        return {n: bool(f) for n, f in zip(names, found)}

    def list_namespaces(self) -> List[str]:
        with _errors():
            members = self._redis.smembers(self._layout.metric_namespaces)
        return sorted(lay.text(self._layout.metric_namespaces, m) for m in members)


class CacheServiceClient:
    """Async reads of the cache: ``async with CacheServiceClient(url=...) as cache:`` (or
    call ``close()``). Over Redis by default; over the daemon's HTTP read API with
    ``use_http=True, http_url=..., http_auth_token=...``."""

    def __init__(self, **kwargs: Any) -> None:
        s = _Settings(**kwargs)
        if s.use_http:
            from .http import HttpAsync
            self._b: Any = HttpAsync(s)
        else:
            self._b = _RedisAsync(s)

    async def __aenter__(self) -> "CacheServiceClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self._b.close()

    async def get_device_metadata(self, device_id: str, required: bool = False) -> Optional[DeviceMetadata]:
        """The device, or None when it is not cached (``required=True``: DeviceNotFound)."""
        return await self._b.get_device_metadata(device_id, required)

    async def get_devices(self, device_ids: Sequence[str]) -> Dict[str, DeviceMetadata]:
        """The cached ones among ``device_ids``, in one round trip; missing ids left out."""
        return await self._b.get_devices(device_ids)

    async def list_devices(self, limit: int = 100, offset: int = 0, pattern: Optional[str] = None,
                           newest_first: bool = True) -> List[DeviceEntry]:
        """A page of the device index; ``pattern`` is a Redis-style glob on the id."""
        return await self._b.list_devices(limit, offset, pattern, newest_first)

    async def get_cache_info(self) -> CacheInfo:
        return await self._b.get_cache_info()

    async def check_health(self) -> HealthStatus:
        """Never raises: a failure is the verdict."""
        return await self._b.check_health()

    async def get_metric_names(self, namespace: Optional[str] = None) -> MetricNames:
        return await self._b.get_metric_names(namespace)

    async def is_valid_metric_name(self, namespace: Optional[str], name: str) -> bool:
        return await self._b.is_valid_metric_name(namespace, name)

    async def are_valid_metric_names(self, namespace: Optional[str], names: Sequence[str]) -> Dict[str, bool]:
        return await self._b.are_valid_metric_names(namespace, names)

    async def list_namespaces(self) -> List[str]:
        return await self._b.list_namespaces()


class CacheServiceClientSync:
    """The same reads without asyncio: ``with CacheServiceClientSync(url=...) as cache:``."""

    def __init__(self, **kwargs: Any) -> None:
        s = _Settings(**kwargs)
        if s.use_http:
            from .http import HttpSync
            self._b: Any = HttpSync(s)
        else:
            self._b = _RedisSync(s)

    def __enter__(self) -> "CacheServiceClientSync":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._b.close()

    def get_device_metadata(self, device_id: str, required: bool = False) -> Optional[DeviceMetadata]:
        """The device, or None when it is not cached (``required=True``: DeviceNotFound)."""
        return self._b.get_device_metadata(device_id, required)

    def get_devices(self, device_ids: Sequence[str]) -> Dict[str, DeviceMetadata]:
        """The cached ones among ``device_ids``, in one round trip; missing ids left out."""
        return self._b.get_devices(device_ids)

    def list_devices(self, limit: int = 100, offset: int = 0, pattern: Optional[str] = None,
                     newest_first: bool = True) -> List[DeviceEntry]:
        """A page of the device index; ``pattern`` is a Redis-style glob on the id."""
        return self._b.list_devices(limit, offset, pattern, newest_first)

    def get_cache_info(self) -> CacheInfo:
        return self._b.get_cache_info()

    def check_health(self) -> HealthStatus:
        """Never raises: a failure is the verdict."""
        return self._b.check_health()

    def get_metric_names(self, namespace: Optional[str] = None) -> MetricNames:
        return self._b.get_metric_names(namespace)

    def is_valid_metric_name(self, namespace: Optional[str], name: str) -> bool:
        return self._b.is_valid_metric_name(namespace, name)

    def are_valid_metric_names(self, namespace: Optional[str], names: Sequence[str]) -> Dict[str, bool]:
        return self._b.are_valid_metric_names(namespace, names)

    def list_namespaces(self) -> List[str]:
        return self._b.list_namespaces()
