"""Publishing events the daemon accepts (the ``[kafka]`` extra: confluent-kafka).

Each event is checked before it is sent against the contract's JSON Schemas (shipped in
this package; a test holds them byte-equal to the repository's ``contract/schemas``), and
keyed the way the daemon needs: device events by device id, catalog events by namespace
(``default`` for the empty one). An event the schemas refuse raises ``InvalidEvent``
naming the field and the reason, and nothing is sent. The decoder checks a few things no
schema can (byte limits, a name twice in one object); an event that passes here and fails
there still lands on the dead-letter topic with the reason, as any other.
"""

import json
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Dict, Iterable, Mapping, Optional, Union

from .errors import CacheServiceError
from .layout import namespace_or_default
from .models import DeviceMetadata


class InvalidEvent(CacheServiceError, ValueError):
    """The contract refuses the event; ``field`` names where, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"field {field!r}: {reason}")
        self.field = field
        self.reason = reason


def _schema(name: str) -> Dict[str, Any]:
    text = resources.files(__package__).joinpath("schemas", f"{name}.schema.json").read_text()
    return json.loads(text)


def _validate(schema: str, value: Mapping[str, Any]) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema(schema))
    errors = sorted(validator.iter_errors(dict(value)), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        field = ".".join(str(p) for p in e.absolute_path)
        if not field and e.validator == "required":
            field = str(e.message).split("'")[1]
        raise InvalidEvent(field or "(value)", e.message)


def _validate_id(field: str, value: str) -> None:
    import jsonschema

    defs = _schema("device-event")["$defs"]
    validator = jsonschema.Draft202012Validator({"$defs": defs, "$ref": "#/$defs/id"})
    for e in validator.iter_errors(value):
        raise InvalidEvent(field, e.message)


def device_event(device: Union[DeviceMetadata, Mapping[str, Any]]) -> Dict[str, Any]:
    """The event value for a device (a model or a plain mapping), checked."""
    if isinstance(device, DeviceMetadata):
        value: Dict[str, Any] = device.model_dump(exclude_none=False)
        value.update(device.additional_properties)
        value["last_updated"] = _rfc3339(device.last_updated)
    else:
        value = dict(device)
        if isinstance(value.get("last_updated"), datetime):
            value["last_updated"] = _rfc3339(value["last_updated"])
    _validate("device-event", value)
    return value


def metric_event(op: str, namespace: Optional[str], metric_names: Iterable[str]) -> Dict[str, Any]:
    """The event value for a catalog operation (``replace``, ``add``, ``remove``), checked."""
    value = {"op": op, "namespace": namespace or "", "metric_names": list(metric_names)}
    _validate("metric-event", value)
    return value


def _rfc3339(when: datetime) -> str:
    if when.tzinfo is None:
        raise InvalidEvent("last_updated", "a datetime without a timezone is ambiguous")
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Publisher:
    """Produces checked, correctly keyed events to metacache's topics.

    ``config`` is confluent-kafka's (librdkafka's) producer configuration, for example
    ``{"bootstrap.servers": "kafka:9092"}``; idempotence is on unless you turn it off, so
    a retried send does not reorder a key's events.
    """

    def __init__(self, config: Mapping[str, Any], device_topic: str = "device-metadata",
                 metric_topic: str = "metric-catalog") -> None:
        from confluent_kafka import Producer

        settings = {"enable.idempotence": True, **dict(config)}
        self._producer = Producer(settings)
        self.device_topic = device_topic
        self.metric_topic = metric_topic

    def publish_device(self, device: Union[DeviceMetadata, Mapping[str, Any]]) -> None:
        value = device_event(device)
        self._send(self.device_topic, value["device_id"], json.dumps(value))

    def delete_device(self, device_id: str) -> None:
        """A tombstone: the daemon deletes the device."""
        _validate_id("device_id", device_id)
        self._send(self.device_topic, device_id, None)

    def publish_metrics(self, op: str, namespace: Optional[str], metric_names: Iterable[str]) -> None:
        value = metric_event(op, namespace, metric_names)
        self._send(self.metric_topic, namespace_or_default(namespace), json.dumps(value))

    def delete_namespace(self, namespace: Optional[str]) -> None:
        """A tombstone: the daemon deletes the namespace's set and unlists it."""
        metric_event("add", namespace, [])  # the namespace rules, reserved prefixes included
        self._send(self.metric_topic, namespace_or_default(namespace), None)

    def flush(self, timeout: float = 30.0) -> int:
        """Waits for every delivery; returns how many are still queued (0 when done)."""
        return self._producer.flush(timeout)

    def _send(self, topic: str, key: str, value: Optional[str]) -> None:
        failures = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(err)

        self._producer.produce(topic, key=key.encode("utf-8"),
                               value=None if value is None else value.encode("utf-8"),
                               on_delivery=delivered)
        self._producer.poll(0)
        if failures:
            raise CacheServiceError(f"Kafka refused an event: {failures[0]}")
