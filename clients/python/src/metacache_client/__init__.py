"""Typed reads of the metacache Redis cache (device metadata and metric catalogs).

    from metacache_client import CacheServiceClientSync

    with CacheServiceClientSync(url="redis://cache:6379/0") as cache:
        device = cache.get_device_metadata("dev-42")
        ok = cache.is_valid_metric_name("billing", "disk")
"""

from .client import CacheServiceClient, CacheServiceClientSync
from .errors import (
    AuthenticationFailed,
    CacheServiceError,
    CacheUnavailable,
    CorruptEntry,
    DeviceNotFound,
    InvalidArgument,
)
from .layout import DEFAULT_NAMESPACE, Glob, namespace_or_default
from .models import CacheInfo, DeviceEntry, DeviceMetadata, HealthStatus, MetricNames

__all__ = [
    "AuthenticationFailed",
    "CacheInfo",
    "CacheServiceClient",
    "CacheServiceClientSync",
    "CacheServiceError",
    "CacheUnavailable",
    "CorruptEntry",
    "DEFAULT_NAMESPACE",
    "DeviceEntry",
    "DeviceMetadata",
    "DeviceNotFound",
    "Glob",
    "HealthStatus",
    "InvalidArgument",
    "MetricNames",
    "namespace_or_default",
]
