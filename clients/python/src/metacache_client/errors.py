"""Typed exceptions: one base, and one class per thing a caller handles differently."""


class CacheServiceError(Exception):
    """Base of every error the client raises."""


class CacheUnavailable(CacheServiceError):
    """Redis (or the HTTP API) could not be reached or did not answer in time; retrying
    later may succeed."""


class AuthenticationFailed(CacheServiceError):
    """Wrong password or user (WRONGPASS/NOAUTH), or a missing permission (NOPERM)."""


class CorruptEntry(CacheServiceError):
    """A key holds something other than what metacache's layout says it holds."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class DeviceNotFound(CacheServiceError, KeyError):
    """Raised by ``get_device_metadata(..., required=True)``; the default returns None."""

    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id!r} is not cached")
        self.device_id = device_id


class InvalidArgument(CacheServiceError, ValueError):
    """An argument metacache's rules refuse (a malformed pattern, a negative limit)."""
