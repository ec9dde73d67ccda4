"""The HTTP back-end against the real daemon's read API: every method returns the same
models as the Redis back-end, async and sync; a bad token is AuthenticationFailed; and
every answer matches the daemon's OpenAPI document."""

import copy
import json

import httpx
import jsonschema
import pytest

from conftest import ROOT, TOKEN
from metacache_client import (
    AuthenticationFailed,
    CacheServiceClient,
    CacheServiceClientSync,
    DeviceNotFound,
    InvalidArgument,
)

OPENAPI = json.loads((ROOT / "src" / "side" / "openapi.json").read_text())


def http(api_url, **kw):
    return CacheServiceClientSync(use_http=True, http_url=api_url, http_auth_token=TOKEN, **kw)


CALLS = [
    ("get_device_metadata", ("dev-42",)),
    ("get_device_metadata", ("dev-45",)),
    ("get_devices", (["dev-42", "dev-43", "dev-99"],)),
    ("list_devices", ()),
    ("list_devices", (2, 1, None, False)),
    ("list_devices", (10, 0, "dev-4[34]", True)),
    ("get_metric_names", ("billing",)),
    ("get_metric_names", ("",)),
    ("get_metric_names", ("nowhere",)),
    ("is_valid_metric_name", ("billing", "disk")),
    ("is_valid_metric_name", ("billing", "cpu")),
    ("are_valid_metric_names", ("infra", ["load1", "load15"])),
    ("list_namespaces", ()),
]


@pytest.mark.parametrize("method,args", CALLS)
def test_both_back_ends_return_equal_models(cache_url, api_url, method, args):
    with CacheServiceClientSync(url=cache_url) as direct, http(api_url) as remote:
        assert getattr(remote, method)(*args) == getattr(direct, method)(*args)


def test_cache_info_and_health_agree(cache_url, api_url):
    with CacheServiceClientSync(url=cache_url) as direct, http(api_url) as remote:
        mine, theirs = direct.get_cache_info(), remote.get_cache_info()
        assert theirs.model_dump(exclude={"stats", "memory_usage_bytes"}) == mine.model_dump(
            exclude={"stats", "memory_usage_bytes"})
        assert theirs.stats and "topics" in theirs.stats
        assert remote.check_health().status == direct.check_health().status == "healthy"


async def test_the_async_http_back_end(cache_url, api_url):
    async with CacheServiceClient(use_http=True, http_url=api_url, http_auth_token=TOKEN) as remote:
        direct = CacheServiceClientSync(url=cache_url)
        assert await remote.get_device_metadata("dev-44") == direct.get_device_metadata("dev-44")
        assert await remote.list_namespaces() == direct.list_namespaces()
        with pytest.raises(DeviceNotFound):
            await remote.get_device_metadata("dev-45", required=True)
        direct.close()


def test_a_bad_token_is_an_authentication_failure(api_url):
    with CacheServiceClientSync(use_http=True, http_url=api_url, http_auth_token="nope") as bad:
        with pytest.raises(AuthenticationFailed):
            bad.get_device_metadata("dev-42")
        assert bad.check_health().status == "unhealthy"
    with http(api_url) as remote:
        with pytest.raises(InvalidArgument):
            remote.list_devices(limit=5000)


def _json_schema(schema):
    """OpenAPI 3.0's `nullable` as JSON Schema, and the document's refs resolvable."""
    schema = copy.deepcopy(schema)

    def fix(node):
        if isinstance(node, dict):
            if node.pop("nullable", False) and "type" in node:
                node["type"] = [node["type"], "null"]
            for value in node.values():
                fix(value)
        elif isinstance(node, list):
            for value in node:
                fix(value)

    fix(schema)
    return schema


@pytest.mark.parametrize("path,params,status", [
    ("/v1/devices/dev-42", None, 200),
    ("/v1/devices/dev-45", None, 404),
    ("/v1/devices", {"limit": 2}, 200),
    ("/v1/devices", [("id", "dev-42"), ("id", "dev-43")], 200),
    ("/v1/devices", {"limit": 100000}, 400),
    ("/v1/cache/info", None, 200),
    ("/v1/health", None, 200),
    ("/v1/namespaces", None, 200),
    ("/v1/namespaces/billing/metric-names", None, 200),
    ("/v1/namespaces/billing/metric-names/valid", [("name", "disk"), ("name", "x")], 200),
])
def test_answers_match_the_openapi_document(api_url, path, params, status):
    response = httpx.get(api_url + path, params=params,
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == status, response.text
    route = path.replace("dev-42", "{id}").replace("dev-45", "{id}").replace("billing", "{namespace}")
    operation = OPENAPI["paths"][route]["get"]
    answer = operation["responses"][str(status)]
    if "$ref" in answer:
        answer = OPENAPI["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    schema = _json_schema(answer["content"]["application/json"]["schema"])
    document = _json_schema(OPENAPI)
    schema["components"] = document["components"]
    jsonschema.validate(response.json(), schema)
