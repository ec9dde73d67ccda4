"""The HTTP back-end (``use_http=True``): the daemon's read API under ``/v1``, for services
without Redis credentials. Same methods, models and errors as the Redis back-end. Needs
the ``[http]`` extra (httpx)."""

from datetime import datetime
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import quote

from . import layout as lay
from .errors import (
    AuthenticationFailed,
    CacheServiceError,
    CacheUnavailable,
    CorruptEntry,
    DeviceNotFound,
    InvalidArgument,
)
from .models import CacheInfo, DeviceEntry, DeviceMetadata, HealthStatus, MetricNames


def _httpx():
    try:
        import httpx
    except ImportError:  # pragma: no cover - depends on the install
        raise CacheServiceError(
            "use_http needs httpx: pip install 'metacache-client[http]'") from None
    return httpx


def _raise_for(response: Any, device_id: Optional[str] = None) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        code, message = error["code"], error["message"]
    except Exception:
        code, message = "", response.text
    status = response.status_code
    if status == 401:
        raise AuthenticationFailed(message)
    if status == 404 and device_id is not None:
        raise DeviceNotFound(device_id)
    if status == 400:
        raise InvalidArgument(message)
    if code == "corrupt_entry":
        raise CorruptEntry(message.split('"')[1] if '"' in message else "", message)
    if status in (502, 503, 504):
        raise CacheUnavailable(message)
    raise CacheServiceError(f"HTTP {status}: {message}")


def _entry(item: Dict[str, Any]) -> DeviceEntry:
    return DeviceEntry(device_id=item["device_id"],
                       last_updated=datetime.fromisoformat(item["last_updated"].replace("Z", "+00:00")))


def _info(body: Dict[str, Any]) -> CacheInfo:
    return CacheInfo.model_validate(body)


def _page_params(limit: int, offset: int, pattern: Optional[str], newest_first: bool) -> Dict[str, Any]:
    lay.check_page(limit, offset)
    params: Dict[str, Any] = {"limit": limit, "offset": offset,
                              "order": "newest" if newest_first else "oldest"}
    if pattern is not None:
        lay.Glob(pattern)  # refuse what the daemon would refuse, before asking
        params["pattern"] = pattern
    return params


def _ns(namespace: Optional[str]) -> str:
    namespace = lay.namespace_or_default(namespace)
    lay.Layout("").metric_names(namespace)  # the reserved prefixes, checked here too
    return quote(namespace, safe="")


class _Http:
    def __init__(self, s: Any, client: Any) -> None:
        self._http = client
        self._s = s


class HttpSync(_Http):
    def __init__(self, s: Any) -> None:
        httpx = _httpx()
        headers = {"Authorization": f"Bearer {s.http_auth_token or ''}"}
        transport = httpx.HTTPTransport(retries=s.retries)
        super().__init__(s, httpx.Client(base_url=s.http_url, timeout=s.http_timeout,
                                         headers=headers, transport=transport))

    def _get(self, path: str, params: Any = None, device_id: Optional[str] = None) -> Any:
        httpx = _httpx()
        try:
            response = self._http.get(path, params=params)
        except httpx.TransportError as e:
            raise CacheUnavailable(str(e) or type(e).__name__) from e
        _raise_for(response, device_id)
        return response.json()

    def close(self) -> None:
        self._http.close()

    def get_device_metadata(self, device_id: str, required: bool = False) -> Optional[DeviceMetadata]:
        try:
            body = self._get(f"/v1/devices/{quote(device_id, safe='')}", device_id=device_id)
        except DeviceNotFound:
            if required:
                raise
            return None
        return DeviceMetadata.model_validate(body)

    def get_devices(self, device_ids: Sequence[str]) -> Dict[str, DeviceMetadata]:
        ids = list(dict.fromkeys(device_ids))
        if not ids:
            return {}
        body = self._get("/v1/devices", params=[("id", i) for i in ids])
        return {i: DeviceMetadata.model_validate(d) for i, d in body["devices"].items()}

    def list_devices(self, limit: int = 100, offset: int = 0, pattern: Optional[str] = None,
                     newest_first: bool = True) -> List[DeviceEntry]:
        if limit == 0:
            lay.check_page(limit, offset)
            return []
        body = self._get("/v1/devices", params=_page_params(limit, offset, pattern, newest_first))
        return [_entry(e) for e in body["devices"]]

    def get_cache_info(self) -> CacheInfo:
        return _info(self._get("/v1/cache/info"))

    def check_health(self) -> HealthStatus:
        try:
            return HealthStatus.model_validate(self._get("/v1/health"))
        except CacheServiceError as e:
            return HealthStatus(status="unhealthy", message=str(e), timestamp=datetime.now().astimezone())

    def get_metric_names(self, namespace: Optional[str] = None) -> MetricNames:
        body = self._get(f"/v1/namespaces/{_ns(namespace)}/metric-names")
        return MetricNames(namespace=body["namespace"], names=frozenset(body["names"]))

    def is_valid_metric_name(self, namespace: Optional[str], name: str) -> bool:
        return self.are_valid_metric_names(namespace, [name])[name]

    def are_valid_metric_names(self, namespace: Optional[str], names: Sequence[str]) -> Dict[str, bool]:
        names = list(names)
        if not names:
            return {}
        body = self._get(f"/v1/namespaces/{_ns(namespace)}/metric-names/valid",
                         params=[("name", n) for n in names])
        return {n: bool(body["valid"][n]) for n in names}

    def list_namespaces(self) -> List[str]:
        return sorted(self._get("/v1/namespaces")["namespaces"])


class HttpAsync(_Http):
    def __init__(self, s: Any) -> None:
        httpx = _httpx()
        headers = {"Authorization": f"Bearer {s.http_auth_token or ''}"}
        transport = httpx.AsyncHTTPTransport(retries=s.retries)
        super().__init__(s, httpx.AsyncClient(base_url=s.http_url, timeout=s.http_timeout,
                                              headers=headers, transport=transport))

    async def _get(self, path: str, params: Any = None, device_id: Optional[str] = None) -> Any:
        httpx = _httpx()
        try:
            response = await self._http.get(path, params=params)
        except httpx.TransportError as e:
            raise CacheUnavailable(str(e) or type(e).__name__) from e
        _raise_for(response, device_id)
        return response.json()

    async def close(self) -> None:
        await self._http.aclose()

    async def get_device_metadata(self, device_id: str, required: bool = False) -> Optional[DeviceMetadata]:
        try:
            body = await self._get(f"/v1/devices/{quote(device_id, safe='')}", device_id=device_id)
        except DeviceNotFound:
            if required:
                raise
            return None
        return DeviceMetadata.model_validate(body)

    async def get_devices(self, device_ids: Sequence[str]) -> Dict[str, DeviceMetadata]:
        ids = list(dict.fromkeys(device_ids))
        if not ids:
            return {}
        body = await self._get("/v1/devices", params=[("id", i) for i in ids])
        return {i: DeviceMetadata.model_validate(d) for i, d in body["devices"].items()}

    async def list_devices(self, limit: int = 100, offset: int = 0, pattern: Optional[str] = None,
                           newest_first: bool = True) -> List[DeviceEntry]:
        if limit == 0:
            lay.check_page(limit, offset)
            return []
        body = await self._get("/v1/devices", params=_page_params(limit, offset, pattern, newest_first))
        return [_entry(e) for e in body["devices"]]

    async def get_cache_info(self) -> CacheInfo:
        return _info(await self._get("/v1/cache/info"))

    async def check_health(self) -> HealthStatus:
        try:
            return HealthStatus.model_validate(await self._get("/v1/health"))
        except CacheServiceError as e:
            return HealthStatus(status="unhealthy", message=str(e), timestamp=datetime.now().astimezone())

    async def get_metric_names(self, namespace: Optional[str] = None) -> MetricNames:
        body = await self._get(f"/v1/namespaces/{_ns(namespace)}/metric-names")
        return MetricNames(namespace=body["namespace"], names=frozenset(body["names"]))

    async def is_valid_metric_name(self, namespace: Optional[str], name: str) -> bool:
        return (await self.are_valid_metric_names(namespace, [name]))[name]

    async def are_valid_metric_names(self, namespace: Optional[str], names: Sequence[str]) -> Dict[str, bool]:
        names = list(names)
        if not names:
            return {}
        body = await self._get(f"/v1/namespaces/{_ns(namespace)}/metric-names/valid",
                               params=[("name", n) for n in names])
        return {n: bool(body["valid"][n]) for n in names}

    async def list_namespaces(self) -> List[str]:
        return sorted((await self._get("/v1/namespaces"))["namespaces"])
