"""metacache's Redis key layout (README "Redis layout" and "Index shards"), and the reply
parsing both the async and the sync client share. Pure: no I/O here."""

import binascii
import json
import re
from datetime import datetime, timezone
from typing import Any, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from pydantic import ValidationError

from .errors import CorruptEntry, InvalidArgument
from .models import CacheInfo, DeviceEntry, DeviceMetadata, MetricNames

DEFAULT_NAMESPACE = "default"
RESERVED_PREFIXES = ("device:", "metacache:")
# Index entries fetched per round trip while filtering list_devices by a pattern.
SCAN_CHUNK = 1000
# The layout version this client reads (the descriptor's `version`).
LAYOUT_VERSION = 1
# The most index shards a layout may have (the contract's MAX_INDEX_SHARDS).
MAX_INDEX_SHARDS = 1024
# Seconds a reading of the layout descriptor is relied on before index reads read it again:
# a reader started before the first daemon (no descriptor yet), or running across a
# `metacache reindex`, follows within this time. The Rust client waits as long.
LAYOUT_REFRESH_SECS = 30.0


def namespace_or_default(namespace: Optional[str]) -> str:
    """An empty (or None) namespace means ``default``, as everywhere in metacache."""
    return namespace if namespace else DEFAULT_NAMESPACE


def index_shard(device_id: str, shards: int) -> int:
    """The index shard that holds ``device_id`` among ``shards``: CRC-16/XMODEM of the id's
    UTF-8 bytes (the checksum Redis Cluster hashes keys with), modulo ``shards``. Part of
    the contract: the writer puts the id there, so every reader must compute the same."""
    return binascii.crc_hqx(device_id.encode("utf-8"), 0) % max(shards, 1)


class Layout:
    """The keys under one ``key_prefix``, with the device index split over
    ``index_shards`` sorted sets (1, the original layout, unless the descriptor says more)."""

    def __init__(self, key_prefix: str = "", index_shards: int = 1) -> None:
        # Clamped as the Rust KeyLayout does: never an empty index, never a division by 0.
        shards = min(max(int(index_shards), 1), MAX_INDEX_SHARDS)
        self.prefix = key_prefix
        self.index_shards = shards
        # One shard keeps the single `devices` key a cache from before the descriptor has;
        # more are `devices:{k}`, whose braces are Redis Cluster hash tags, so the shards
        # spread over the cluster's slots instead of piling on one node.
        self.index_keys: Tuple[str, ...] = (
            (f"{key_prefix}devices",) if shards == 1
            else tuple(f"{key_prefix}devices:{{{k}}}" for k in range(shards)))
        self.metric_namespaces = f"{key_prefix}metric_namespaces"
        self.layout = f"{key_prefix}metacache:layout"

    def with_index_shards(self, index_shards: int) -> "Layout":
        return Layout(self.prefix, index_shards)

    def index_key(self, device_id: str) -> str:
        """The index key that holds ``device_id``."""
        if self.index_shards == 1:
            return self.index_keys[0]
        return self.index_keys[index_shard(device_id, self.index_shards)]

    def device(self, device_id: str) -> str:
        return f"{self.prefix}device:{device_id}"

    def metric_names(self, namespace: Optional[str]) -> str:
        namespace = namespace_or_default(namespace)
        for reserved in RESERVED_PREFIXES:
            if namespace.startswith(reserved):
                raise InvalidArgument(
                    f"namespace {namespace!r} starts with {reserved!r}, which metacache reserves"
                )
        return f"{self.prefix}{namespace}#metric_names"


def text(key: str, raw: Any) -> str:
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorruptEntry(key, f"value is not UTF-8: {e}") from None
    if isinstance(raw, str):
        return raw
    raise CorruptEntry(key, f"expected a string, got {type(raw).__name__}")


def device(key: str, device_id: str, raw: Any) -> DeviceMetadata:
    """The device stored under ``key``, checked to be the device asked for."""
    value = text(key, raw)
    try:
        fields = json.loads(value)
    except ValueError as e:
        raise CorruptEntry(key, f"not JSON: {e}") from None
    if not isinstance(fields, dict):
        raise CorruptEntry(key, "not a JSON object")
    try:
        model = DeviceMetadata.model_validate(fields)
    except ValidationError as e:
        raise CorruptEntry(key, f"not a device's JSON: {e.errors()[0]['msg']}") from None
    if model.device_id != device_id:
        raise CorruptEntry(key, f"holds device {model.device_id!r}, not {device_id!r}")
    return model


class Descriptor(NamedTuple):
    """What ``metacache:layout`` holds."""

    version: int
    key_prefix: str
    index_shards: int


_WHOLE = re.compile(r"\+?[0-9]+\Z")


def descriptor(key: str, fields: Mapping[Any, Any]) -> Optional[Descriptor]:
    """The descriptor in ``fields`` (as HGETALL returns them), or None for an empty hash:
    a cache written before the descriptor existed, read as one ``devices`` key. A missing
    or out-of-range field is a CorruptEntry naming it, with the Rust client's words, so no
    reader guesses a layout from a damaged descriptor."""
    if not fields:
        return None
    decoded = {text(key, k): v for k, v in fields.items()}

    def field(name: str) -> str:
        if name not in decoded:
            raise CorruptEntry(key, f"the layout descriptor has no `{name}` field")
        return text(key, decoded[name])

    def number(name: str) -> int:
        raw = field(name)
        # What Rust's u32 parse takes, no more: int() would also take "1_0", "-1", "١".
        value = raw.strip()
        if not _WHOLE.match(value) or int(value) > 0xFFFFFFFF:
            raise CorruptEntry(key, f"the layout descriptor's `{name}` is not a whole number: {raw!r}")
        return int(value)

    version = number("version")
    if version != LAYOUT_VERSION:
        raise CorruptEntry(key, f"the layout descriptor has version {version}; this client reads "
                                f"version {LAYOUT_VERSION} (upgrade the reader)")
    shards = number("index_shards")
    if not 1 <= shards <= MAX_INDEX_SHARDS:
        raise CorruptEntry(key, f"the layout descriptor's `index_shards` is {shards}, "
                                f"outside 1..={MAX_INDEX_SHARDS}")
    return Descriptor(version=version, key_prefix=field("key_prefix"), index_shards=shards)


def described(base: Layout, fields: Mapping[Any, Any]) -> Layout:
    """The layout a reader configured with ``base`` reads, given its descriptor's fields.
    The descriptor lives under the prefix it names, so only the shard count is news (as in
    the Rust client, the reader's own prefix stays)."""
    found = descriptor(base.layout, fields)
    return base.with_index_shards(found.index_shards if found else 1)


def from_ms(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)


def scored(key: str, pairs: Iterable[Tuple[Any, Any]]) -> List[Tuple[str, float]]:
    """The (id, score) pairs of a ``WITHSCORES`` reply of index key ``key``, checked to be
    ids and times, so that a merge across shards compares what it will return."""
    out = []
    for member, score in pairs:
        try:
            ms = float(score)
            from_ms(ms)
        except (TypeError, ValueError, OverflowError, OSError):
            raise CorruptEntry(key, f"score {score!r} is not a time in milliseconds") from None
        out.append((text(key, member), ms))
    return out


def merge(shards: Iterable[Sequence[Tuple[str, float]]], newest_first: bool) -> List[Tuple[str, float]]:
    """The (id, score) pairs of several index shards in the order one sorted set holding
    them all would list: score, then id (Redis compares ids as bytes, and UTF-8 keeps code
    point order, so comparing the str is the same), both reversed for newest first, as
    ZREVRANGE does."""
    merged = [pair for shard in shards for pair in shard]
    merged.sort(key=lambda p: (p[1], p[0]), reverse=newest_first)
    return merged


def range_bounds(layout: Layout, start: int, count: int) -> Tuple[int, int]:
    """The ranks to ask every index key for: the page itself from one key; from N, each
    shard's first ``start + count``, since any of them may hold the whole page."""
    if layout.index_shards == 1:
        return start, start + count - 1
    return 0, start + count - 1


def index_page(layout: Layout, replies: Sequence[Any], newest_first: bool, start: int,
               count: int) -> List[DeviceEntry]:
    """Up to ``count`` entries from rank ``start``, from the replies to ``range_bounds``'
    ranges of every index key (in ``layout.index_keys`` order)."""
    pages = [scored(key, reply) for key, reply in zip(layout.index_keys, replies)]
    if layout.index_shards == 1:
        page = pages[0]
    else:
        page = merge(pages, newest_first)[start:start + count]
    return [DeviceEntry(device_id=i, last_updated=from_ms(ms)) for i, ms in page]


def names(namespace: Optional[str], members: Iterable[Any], key: str) -> MetricNames:
    return MetricNames(
        namespace=namespace_or_default(namespace),
        names=frozenset(text(key, m) for m in members),
    )


def used_memory(info: Any) -> Optional[int]:
    """``used_memory`` from redis-py's parsed ``INFO memory``: one server's dict, or, from a
    cluster client asked for every primary, a dict of them by node, summed (the cache's
    keys are spread over the primaries; replicas hold copies). None when any is unknown,
    rather than a sum that leaves a node out."""
    if not isinstance(info, dict):
        return None
    if "used_memory" in info:
        try:
            return int(info["used_memory"])
        except (TypeError, ValueError):
            return None
    nodes = list(info.values())
    if not nodes or not all(isinstance(n, dict) for n in nodes):
        return None
    each = [used_memory(n) for n in nodes]
    if any(n is None for n in each):
        return None
    return sum(each)  # type: ignore[arg-type]


def cache_info(layout: Layout, replies: Sequence[Any], memory: Optional[int]) -> CacheInfo:
    """From the replies to ZCARD, ZRANGE 0 0 and ZREVRANGE 0 0 (WITHSCORES) of every index
    key in turn, then SCARD of the namespaces. The oldest entry is the least by (score, id)
    of the shards' first, the newest the greatest of their last: what one key would say."""
    keys = layout.index_keys
    total = 0
    firsts: List[Tuple[str, float]] = []
    lasts: List[Tuple[str, float]] = []
    for n, key in enumerate(keys):
        count, first, last = replies[3 * n:3 * n + 3]
        total += int(count)
        firsts.extend(scored(key, first))
        lasts.extend(scored(key, last))
    oldest = min(firsts, key=lambda p: (p[1], p[0]), default=None)
    newest = max(lasts, key=lambda p: (p[1], p[0]), default=None)
    return CacheInfo(
        total_devices=total,
        metric_namespaces=int(replies[-1]),
        memory_usage_bytes=memory,
        oldest_entry_timestamp=from_ms(oldest[1]) if oldest else None,
        newest_entry_timestamp=from_ms(newest[1]) if newest else None,
        oldest_device_id=oldest[0] if oldest else None,
        newest_device_id=newest[0] if newest else None,
    )


def check_page(limit: int, offset: int) -> None:
    if limit < 0 or offset < 0:
        raise InvalidArgument("limit and offset must not be negative")


class Glob:
    """A Redis-style glob (``*``, ``?``, ``[abc]``, ``[^a-z]``, ``\\x``), matched the way
    Redis's MATCH does, so a pattern lists the same ids here as with ZSCAN MATCH."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._regex = re.compile(self._translate(pattern), re.DOTALL)

    @staticmethod
    def _translate(pattern: str) -> str:
        out = []
        i = 0
        while i < len(pattern):
            c = pattern[i]
            if c == "*":
                out.append(".*")
            elif c == "?":
                out.append(".")
            elif c == "\\":
                if i + 1 >= len(pattern):
                    raise InvalidArgument(f"pattern {pattern!r} ends with a lone backslash")
                i += 1
                out.append(re.escape(pattern[i]))
            elif c == "[":
                end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("^", "]") else i + 1)
                if end < 0:
                    raise InvalidArgument(f"pattern {pattern!r} has an unclosed [")
                body = pattern[i + 1:end]
                negate = body.startswith("^")
                if negate:
                    body = body[1:]
                parts = []
                j = 0
                while j < len(body):
                    if body[j] == "\\" and j + 1 < len(body):
                        parts.append(re.escape(body[j + 1]))
                        j += 2
                    elif j + 2 < len(body) and body[j + 1] == "-":
                        lo, hi = sorted((body[j], body[j + 2]))
                        parts.append(f"{re.escape(lo)}-{re.escape(hi)}")
                        j += 3
                    else:
                        parts.append(re.escape(body[j]))
                        j += 1
                out.append(f"[{'^' if negate else ''}{''.join(parts)}]")
                i = end
            else:
                out.append(re.escape(c))
            i += 1
        return "".join(out) + r"\Z"

    def matches(self, text_: str) -> bool:
        return self._regex.match(text_) is not None


def pattern(pattern_: Optional[str]) -> Optional[Glob]:
    if pattern_ is None or pattern_ == "*":
        return None
    return Glob(pattern_)
