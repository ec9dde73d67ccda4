"""The models, in the contract's terms (README "Events" and "Redis layout")."""

from datetime import datetime, timezone
from typing import Any, Dict, FrozenSet, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAMED_FIELDS = (
    "device_id",
    "datatype_id",
    "datatype_name",
    "datatype_unit",
    "persist",
    "last_updated",
)


class DeviceMetadata(BaseModel):
    """One device as stored under ``device:{id}``: the named fields, and every other field
    of the event kept as it came, in ``additional_properties``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    device_id: str
    datatype_id: str
    datatype_name: str
    datatype_unit: Optional[str] = None
    persist: bool
    last_updated: datetime

    @field_validator("last_updated")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("last_updated must carry an offset")
        return value.astimezone(timezone.utc)

    @property
    def additional_properties(self) -> Dict[str, Any]:
        """The event's fields beyond the named ones (``site``, ``tags``, …)."""
        return dict(self.model_extra or {})


class MetricNames(BaseModel):
    """A namespace's valid metric names (``{namespace}#metric_names``)."""

    model_config = ConfigDict(frozen=True)

    namespace: str
    names: FrozenSet[str] = Field(default_factory=frozenset)

    def __contains__(self, name: object) -> bool:
        return name in self.names


class DeviceEntry(BaseModel):
    """One entry of the ``devices`` index."""

    model_config = ConfigDict(frozen=True)

    device_id: str
    last_updated: datetime


class CacheInfo(BaseModel):
    """What the cache holds. Over Redis: the index and namespace counts, the oldest and
    newest index entries and Redis's memory; over HTTP also what ``/stats`` knows."""

    total_devices: int
    metric_namespaces: int
    memory_usage_bytes: Optional[int] = None
    oldest_entry_timestamp: Optional[datetime] = None
    newest_entry_timestamp: Optional[datetime] = None
    oldest_device_id: Optional[str] = None
    newest_device_id: Optional[str] = None
    stats: Optional[Dict[str, Any]] = None


class HealthStatus(BaseModel):
    """Whether the cache can be read: ``healthy``, ``degraded`` (slow, or Redis may evict
    entries) or ``unhealthy`` (unreachable)."""

    status: Literal["healthy", "degraded", "unhealthy"]
    message: str
    timestamp: datetime
    latency_ms: Optional[float] = None
    maxmemory_policy: Optional[str] = None

    @model_validator(mode="after")
    def _aware(self) -> "HealthStatus":
        if self.timestamp.tzinfo is None:
            raise ValueError("timestamp must carry an offset")
        return self
