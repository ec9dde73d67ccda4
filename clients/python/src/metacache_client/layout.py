"""metacache's Redis key layout (README "Redis layout"), and the reply parsing both the
async and the sync client share. Pure: no I/O here."""

import json
import re
from datetime import datetime, timezone
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from pydantic import ValidationError

from .errors import CorruptEntry, InvalidArgument
from .models import CacheInfo, DeviceEntry, DeviceMetadata, MetricNames

DEFAULT_NAMESPACE = "default"
RESERVED_PREFIXES = ("device:", "metacache:")
# Index entries fetched per round trip while filtering list_devices by a pattern.
SCAN_CHUNK = 1000


def namespace_or_default(namespace: Optional[str]) -> str:
    """An empty (or None) namespace means ``default``, as everywhere in metacache."""
    return namespace if namespace else DEFAULT_NAMESPACE


class Layout:
    """The keys under one ``key_prefix``."""

    def __init__(self, key_prefix: str = "") -> None:
        self.prefix = key_prefix
        self.devices = f"{key_prefix}devices"
        self.metric_namespaces = f"{key_prefix}metric_namespaces"

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


def from_ms(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)


def entries(key: str, pairs: Iterable[Tuple[Any, Any]]) -> List[DeviceEntry]:
    out = []
    for member, score in pairs:
        try:
            out.append(DeviceEntry(device_id=text(key, member), last_updated=from_ms(float(score))))
        except (TypeError, ValueError, OverflowError):
            raise CorruptEntry(key, f"score {score!r} is not a time in milliseconds") from None
    return out


def names(namespace: Optional[str], members: Iterable[Any], key: str) -> MetricNames:
    return MetricNames(
        namespace=namespace_or_default(namespace),
        names=frozenset(text(key, m) for m in members),
    )


def cache_info(layout: Layout, replies: Sequence[Any]) -> CacheInfo:
    total, oldest, newest, namespaces, memory = replies
    oldest_entries = entries(layout.devices, oldest)
    newest_entries = entries(layout.devices, newest)
    used = memory.get("used_memory") if isinstance(memory, dict) else None
    return CacheInfo(
        total_devices=int(total),
        metric_namespaces=int(namespaces),
        memory_usage_bytes=int(used) if used is not None else None,
        oldest_entry_timestamp=oldest_entries[0].last_updated if oldest_entries else None,
        newest_entry_timestamp=newest_entries[0].last_updated if newest_entries else None,
        oldest_device_id=oldest_entries[0].device_id if oldest_entries else None,
        newest_device_id=newest_entries[0].device_id if newest_entries else None,
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
