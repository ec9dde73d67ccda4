//! The producer side: build device and metric-catalog events from the typed models and
//! produce them to Kafka with the right key, so a producer cannot emit an event the daemon
//! would reject.
//!
//! Every record is checked with the daemon's own decoder ([`model::decode`]) under the
//! configured [`Limits`] before it is handed to librdkafka; a record that fails is an
//! error here, not a dead letter later. Keys follow the README's rule: device events are
//! keyed by device id, catalog events by namespace, so each device's and each namespace's
//! events stay in one partition, in order. An empty namespace is sent as `default`, in the
//! payload and the key alike, so that events for the default namespace share one
//! partition whichever way they spell it.
//!
//! The producer uses `acks=all` and `enable.idempotence=true` (no reordering on retries)
//! and the `kafka.client` table for SASL, SSL and tuning, as the daemon's dead-letter
//! producer does.
//!
//! ```
//! use metacache::config::Settings;
//! use metacache::model::DeviceMetadata;
//! use metacache::tools::publish::Publisher;
//! # use metacache::tools::embedded::EmbeddedKafka;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let kafka = EmbeddedKafka::start(1, &[("device-metadata", 1), ("metric-catalog", 1)])?;
//! let mut settings = Settings::default();
//! settings.kafka.brokers = kafka.bootstrap().to_owned();
//! let publisher = Publisher::new(&settings)?;
//!
//! let device = DeviceMetadata::from_normalized_json(
//!     r#"{"device_id":"dev-7","datatype_id":"dt-1","datatype_name":"rpm","persist":true,"last_updated":"2026-11-24T08:00:00Z"}"#,
//! )?;
//! publisher.upsert_device(&device).await?;
//! publisher.add_metric_names("billing", &["cpu", "mem"]).await?;
//! publisher.delete_device("dev-6").await?; // a tombstone
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

use std::collections::VecDeque;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::Value;

use crate::config::Settings;
use crate::model::{
    self, namespace_or_default, DeviceMetadata, Event, Limits, MetricOp, Reject, RejectReason,
    TopicKind,
};
use crate::pipeline::source::kafka::{client_config, ProducerLogContext};

/// Most records awaiting the broker's acknowledgement at once in [`Publisher::send_all`].
const MAX_IN_FLIGHT: usize = 10_000;

/// How long a record may wait for delivery (librdkafka `message.timeout.ms`) unless
/// `kafka.client` says otherwise: long enough for a leader election, short enough that a
/// wrong broker address is reported within a minute.
const DEFAULT_MESSAGE_TIMEOUT_MS: &str = "30000";

/// What can go wrong when publishing.
///
/// ```
/// use metacache::tools::publish::{Outgoing, PublishError};
/// use metacache::model::{Limits, TopicKind};
///
/// let empty_id = Outgoing { kind: TopicKind::Device, key: String::new(), payload: None };
/// let e = PublishError::from(empty_id.validate(&Limits::default()).unwrap_err());
/// assert!(e.to_string().starts_with("the daemon would reject this event: missing_key"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The daemon's decoder refuses the event; nothing was sent.
    #[error("the daemon would reject this event: {0}")]
    Invalid(#[from] Reject),
    /// librdkafka refused the settings, or the broker did not acknowledge a record.
    #[error("Kafka: {0}")]
    Kafka(String),
}

/// One Kafka record as metacache expects it: which topic, the key, and the value
/// (`None` is a tombstone).
///
/// ```
/// use metacache::model::{Event, MetricOp, TopicKind};
/// use metacache::tools::publish::Outgoing;
///
/// let record = Outgoing::from_event(&Event::Metric(MetricOp::Delete { namespace: "".into() }));
/// assert_eq!(record.kind, TopicKind::Metric);
/// assert_eq!(record.key, "default");
/// assert_eq!(record.payload, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The device topic or the metric-catalog topic.
    pub kind: TopicKind,
    /// The Kafka key: the device id, or the namespace.
    pub key: String,
    /// The JSON value; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
}

impl Outgoing {
    /// The record for a typed event: device upserts carry the normalized JSON the daemon
    /// stores, catalog operations `{"op", "namespace", "metric_names"}`, deletions are
    /// tombstones. Not yet validated: see [`validate`](Self::validate).
    ///
    /// ```
    /// use metacache::model::{Event, MetricOp};
    /// use metacache::tools::publish::Outgoing;
    ///
    /// let record = Outgoing::from_event(&Event::Metric(MetricOp::Add {
    ///     namespace: "billing".into(),
    ///     metric_names: vec!["disk".into()],
    /// }));
    /// assert_eq!(record.key, "billing");
    /// assert_eq!(
    ///     record.payload.as_deref(),
    ///     Some(&br#"{"op":"add","namespace":"billing","metric_names":["disk"]}"#[..])
    /// );
    /// ```
    pub fn from_event(event: &Event) -> Outgoing {
        match event {
            Event::DeviceUpsert(device) => Outgoing {
                kind: TopicKind::Device,
                key: device.device_id().to_owned(),
                payload: Some(device.normalized_json().as_bytes().to_vec()),
            },
            Event::DeviceDelete { device_id } => Outgoing {
                kind: TopicKind::Device,
                key: device_id.clone(),
                payload: None,
            },
            Event::Metric(op) => {
                let namespace = namespace_or_default(op.namespace()).to_owned();
                let (name, metric_names) = match op {
                    MetricOp::Replace { metric_names, .. } => ("replace", metric_names),
                    MetricOp::Add { metric_names, .. } => ("add", metric_names),
                    MetricOp::Remove { metric_names, .. } => ("remove", metric_names),
                    MetricOp::Delete { .. } => {
                        return Outgoing {
                            kind: TopicKind::Metric,
                            key: namespace,
                            payload: None,
                        }
                    }
                };
                let payload = CatalogPayload {
                    op: name,
                    namespace: &namespace,
                    metric_names,
                };
                // Strings and a string list always serialize.
                let payload = serde_json::to_vec(&payload).unwrap_or_default();
                Outgoing {
                    kind: TopicKind::Metric,
                    key: namespace,
                    payload: Some(payload),
                }
            }
        }
    }

    /// What the daemon would decode this record to, or why it would reject it: the
    /// daemon's own [`model::decode`] with the key and value as they will be sent.
    ///
    /// ```
    /// use metacache::model::{Event, Limits, TopicKind};
    /// use metacache::tools::publish::Outgoing;
    ///
    /// let record = Outgoing {
    ///     kind: TopicKind::Metric,
    ///     key: "billing".into(),
    ///     payload: Some(br#"{"op":"add","namespace":"infra","metric_names":[]}"#.to_vec()),
    /// };
    /// let reject = record.validate(&Limits::default()).unwrap_err();
    /// assert_eq!(reject.reason.as_str(), "key_mismatch");
    /// ```
    pub fn validate(&self, limits: &Limits) -> Result<Event, Reject> {
        model::decode(
            self.kind,
            Some(self.key.as_bytes()),
            self.payload.as_deref(),
            limits,
        )
    }
}

/// A catalog event's value, fields in the documented order.
#[derive(serde::Serialize)]
struct CatalogPayload<'a> {
    op: &'a str,
    namespace: &'a str,
    metric_names: &'a [String],
}

/// A JSON Lines line that cannot be sent, with its 1-based line number.
///
/// ```
/// use metacache::model::{Limits, TopicKind};
///
/// let parsed = metacache::tools::publish::parse_lines(TopicKind::Device, b"{}\n", &Limits::default());
/// let error = &parsed.errors[0];
/// assert_eq!(error.line, 1);
/// assert!(error.to_string().starts_with("line 1: missing_field: field `device_id`"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reject}")]
pub struct LineError {
    /// The line number, counting from 1.
    pub line: usize,
    /// Why the daemon would reject it.
    pub reject: Reject,
}

/// The outcome of [`parse_lines`]: the records to send, in order, and the bad lines.
///
/// ```
/// use metacache::model::{Limits, TopicKind};
///
/// let text = b"{\"op\":\"add\",\"metric_names\":[\"a\"]}\n\n{\"tombstone\":\"old\"}\nnot json\n";
/// let parsed = metacache::tools::publish::parse_lines(TopicKind::Metric, text, &Limits::default());
/// let lines: Vec<usize> = parsed.records.iter().map(|(line, _)| *line).collect();
/// assert_eq!(lines, [1, 3]);
/// assert_eq!(parsed.errors[0].line, 4);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedLines {
    /// Valid records with their line numbers.
    pub records: Vec<(usize, Outgoing)>,
    /// Lines the daemon would reject.
    pub errors: Vec<LineError>,
}

/// Reads one JSON Lines line for the `kind` topic into the record to send.
///
/// A line is either an event, exactly as it would be sent (the key is taken from it: the
/// device id, or the namespace with empty meaning `default`), or a tombstone written as
/// `{"tombstone": "<key>"}`: an object with that one field, whose value is the device id
/// or namespace to delete (`""` means `default` on the metric topic). Leading and trailing
/// whitespace (a `\r` too) is ignored. The line is checked with the daemon's decoder.
///
/// ```
/// use metacache::model::{Limits, TopicKind};
/// use metacache::tools::publish::parse_line;
///
/// let limits = Limits::default();
/// let line = br#"{"device_id":"dev-1","datatype_id":"d","datatype_name":"n","persist":true,"last_updated":"2026-11-22T10:00:00Z"}"#;
/// assert_eq!(parse_line(TopicKind::Device, line, &limits)?.key, "dev-1");
///
/// let tombstone = parse_line(TopicKind::Device, br#"{"tombstone": "dev-1"}"#, &limits)?;
/// assert_eq!((tombstone.key.as_str(), tombstone.payload), ("dev-1", None));
///
/// let bad = parse_line(TopicKind::Device, br#"{"device_id":"dev-1"}"#, &limits).unwrap_err();
/// assert_eq!(bad.reason.as_str(), "missing_field");
/// # Ok::<(), metacache::model::Reject>(())
/// ```
pub fn parse_line(kind: TopicKind, line: &[u8], limits: &Limits) -> Result<Outgoing, Reject> {
    let line = line.trim_ascii();
    if let Some(key) = tombstone_key(line)? {
        let key = match kind {
            TopicKind::Metric => namespace_or_default(&key).to_owned(),
            TopicKind::Device => key,
        };
        let record = Outgoing {
            kind,
            key,
            payload: None,
        };
        record.validate(limits)?;
        return Ok(record);
    }
    let key = match model::decode_value(kind, line, limits)? {
        Event::DeviceUpsert(device) => device.device_id().to_owned(),
        Event::Metric(op) => op.namespace().to_owned(),
        // A value is never decoded as a deletion.
        Event::DeviceDelete { device_id } => device_id,
    };
    let record = Outgoing {
        kind,
        key,
        payload: Some(line.to_vec()),
    };
    record.validate(limits)?;
    Ok(record)
}

/// `Some(key)` for a `{"tombstone": "<key>"}` line.
fn tombstone_key(line: &[u8]) -> Result<Option<String>, Reject> {
    if !line.starts_with(b"{") {
        return Ok(None);
    }
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(line) else {
        return Ok(None);
    };
    if fields.len() != 1 {
        return Ok(None);
    }
    match fields.remove("tombstone") {
        None => Ok(None),
        Some(Value::String(key)) => Ok(Some(key)),
        Some(_) => Err(Reject::new(
            RejectReason::WrongType,
            Some("tombstone"),
            "expected the key of the device or namespace to delete, as a string",
        )),
    }
}

/// Reads JSON Lines text for the `kind` topic: every non-blank line through
/// [`parse_line`], each bad one reported with its line number.
///
/// ```
/// use metacache::model::{Limits, TopicKind};
///
/// let text = br#"{"op":"replace","namespace":"infra","metric_names":["load1"]}
/// {"op":"rename","namespace":"infra","metric_names":[]}"#;
/// let parsed = metacache::tools::publish::parse_lines(TopicKind::Metric, text, &Limits::default());
/// assert_eq!(parsed.records.len(), 1);
/// assert_eq!(parsed.errors[0].line, 2);
/// assert_eq!(parsed.errors[0].reject.reason.as_str(), "unknown_op");
/// ```
pub fn parse_lines(kind: TopicKind, text: &[u8], limits: &Limits) -> ParsedLines {
    let mut parsed = ParsedLines::default();
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        match parse_line(kind, line, limits) {
            Ok(record) => parsed.records.push((i + 1, record)),
            Err(reject) => parsed.errors.push(LineError {
                line: i + 1,
                reject,
            }),
        }
    }
    parsed
}

/// Produces validated events to the configured topics.
///
/// Cheap to share by reference between tasks; librdkafka batches and sends in the
/// background. Each `send` resolves once the broker has acknowledged the record.
///
/// ```
/// use metacache::config::Settings;
/// use metacache::model::{Event, MetricOp};
/// use metacache::tools::publish::Publisher;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let kafka = metacache::tools::embedded::EmbeddedKafka::start(1, &[("device-metadata", 1), ("metric-catalog", 1)])?;
/// # let mut settings = Settings::default();
/// # settings.kafka.brokers = kafka.bootstrap().to_owned();
/// let publisher = Publisher::new(&settings)?;
/// publisher
///     .publish(&Event::Metric(MetricOp::Remove {
///         namespace: "billing".into(),
///         metric_names: vec!["cpu".into()],
///     }))
///     .await?;
/// # Ok(()) }
/// ```
pub struct Publisher {
    producer: FutureProducer<ProducerLogContext>,
    device_topic: String,
    metric_topic: String,
    limits: Limits,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("device_topic", &self.device_topic)
            .field("metric_topic", &self.metric_topic)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A producer for `kafka.brokers` with the `kafka.client` properties, sending to
    /// `kafka.device_topic` and `kafka.metric_topic` and validating under `limits`.
    /// librdkafka connects lazily: a wrong address shows up as a failed send.
    ///
    /// ```
    /// use metacache::config::Settings;
    /// use metacache::tools::publish::Publisher;
    ///
    /// let mut settings = Settings::default();
    /// settings.kafka.brokers = "127.0.0.1:9092".into();
    /// let publisher = Publisher::new(&settings)?;
    /// assert_eq!(publisher.topic(metacache::model::TopicKind::Metric), "metric-catalog");
    /// # Ok::<(), metacache::tools::publish::PublishError>(())
    /// ```
    pub fn new(settings: &Settings) -> Result<Publisher, PublishError> {
        let mut config = client_config(&settings.kafka);
        if !settings.kafka.client.contains_key("message.timeout.ms") {
            config.set("message.timeout.ms", DEFAULT_MESSAGE_TIMEOUT_MS);
        }
        // Whatever the limits accept as valid must also be sendable (librdkafka's own
        // default, 1,000,000 bytes, is below the default limit of 1 MiB).
        config.set(
            "message.max.bytes",
            settings
                .kafka
                .dead_letter_max_bytes(&settings.limits)
                .to_string(),
        );
        let producer = config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create_with_context(ProducerLogContext::default())
            .map_err(|e| PublishError::Kafka(format!("cannot create the producer: {e}")))?;
        Ok(Publisher {
            producer,
            device_topic: settings.kafka.device_topic.clone(),
            metric_topic: settings.kafka.metric_topic.clone(),
            limits: settings.limits.clone(),
        })
    }

    /// The configured topic for `kind`.
    ///
    /// ```
    /// # let publisher = metacache::tools::publish::Publisher::new(&Default::default())?;
    /// assert_eq!(publisher.topic(metacache::model::TopicKind::Device), "device-metadata");
    /// # Ok::<(), metacache::tools::publish::PublishError>(())
    /// ```
    pub fn topic(&self, kind: TopicKind) -> &str {
        match kind {
            TopicKind::Device => &self.device_topic,
            TopicKind::Metric => &self.metric_topic,
        }
    }

    /// Inserts or updates a device: its normalized JSON, keyed by device id.
    ///
    /// ```
    /// # use metacache::config::Settings;
    /// # use metacache::tools::publish::Publisher;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let kafka = metacache::tools::embedded::EmbeddedKafka::start(1, &[("device-metadata", 1)])?;
    /// # let mut settings = Settings::default();
    /// # settings.kafka.brokers = kafka.bootstrap().to_owned();
    /// let publisher = Publisher::new(&settings)?;
    /// let mut device = metacache::model::DeviceMetadata::from_normalized_json(
    ///     r#"{"device_id":"pump 3","datatype_id":"dt-4","datatype_name":"flow","datatype_unit":"l/s","persist":false,"last_updated":"2026-11-24T08:00:00Z"}"#,
    /// )?;
    /// publisher.upsert_device(&device).await?;
    ///
    /// device.device_id.clear(); // the daemon would refuse it, so nothing is sent
    /// assert!(publisher.upsert_device(&device).await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn upsert_device(&self, device: &DeviceMetadata) -> Result<(), PublishError> {
        self.publish(&Event::DeviceUpsert(device.into())).await
    }

    /// Deletes a device: a tombstone keyed by its id.
    ///
    /// ```
    /// # use metacache::config::Settings;
    /// # use metacache::tools::publish::Publisher;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let kafka = metacache::tools::embedded::EmbeddedKafka::start(1, &[("device-metadata", 1)])?;
    /// # let mut settings = Settings::default();
    /// # settings.kafka.brokers = kafka.bootstrap().to_owned();
    /// let publisher = Publisher::new(&settings)?;
    /// publisher.delete_device("dev-45").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_device(&self, device_id: &str) -> Result<(), PublishError> {
        self.publish(&Event::DeviceDelete {
            device_id: device_id.to_owned(),
        })
        .await
    }

    /// Makes `namespace`'s set exactly `names` (possibly none), atomically in Redis.
    ///
    /// ```
    /// # use metacache::config::Settings;
    /// # use metacache::tools::publish::Publisher;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let kafka = metacache::tools::embedded::EmbeddedKafka::start(1, &[("metric-catalog", 1)])?;
    /// # let mut settings = Settings::default();
    /// # settings.kafka.brokers = kafka.bootstrap().to_owned();
    /// let publisher = Publisher::new(&settings)?;
    /// publisher.replace_metric_names("billing", &["cpu", "mem"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn replace_metric_names<S: AsRef<str>>(
        &self,
        namespace: &str,
        names: &[S],
    ) -> Result<(), PublishError> {
        self.publish(&Event::Metric(MetricOp::Replace {
            namespace: namespace.to_owned(),
            metric_names: owned(names),
        }))
        .await
    }

    /// Adds `names` to `namespace`'s set (and lists the namespace).
    ///
    /// ```
    /// # use metacache::config::Settings;
    /// # use metacache::tools::publish::Publisher;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let kafka = metacache::tools::embedded::EmbeddedKafka::start(1, &[("metric-catalog", 1)])?;
    /// # let mut settings = Settings::default();
    /// # settings.kafka.brokers = kafka.bootstrap().to_owned();
    /// let publisher = Publisher::new(&settings)?;
    /// publisher.add_metric_names("", &["requests"]).await?; // the default namespace
    /// # Ok(()) }
    /// ```
    pub async fn add_metric_names<S: AsRef<str>>(
        &self,
        namespace: &str,
        names: &[S],
    ) -> Result<(), PublishError> {
        self.publish(&Event::Metric(MetricOp::Add {
            namespace: namespace.to_owned(),
            metric_names: owned(names),
        }))
        .await
    }

    /// Removes `names` from `namespace`'s set.
    ///
    /// ```
    /// # use metacache::config::Settings;
    /// # use metacache::tools::publish::Publisher;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let kafka = metacache::tools::embedded::EmbeddedKafka::start(1, &[("metric-catalog", 1)])?;
    /// # let mut settings = Settings::default();
    /// # settings.kafka.brokers = kafka.bootstrap().to_owned();
    /// let publisher = Publisher::new(&settings)?;
    /// publisher.remove_metric_names("billing", &["cpu"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn remove_metric_names<S: AsRef<str>>(
        &self,
        namespace: &str,
        names: &[S],
    ) -> Result<(), PublishError> {
        self.publish(&Event::Metric(MetricOp::Remove {
            namespace: namespace.to_owned(),
            metric_names: owned(names),
        }))
        .await
    }

    /// Deletes a namespace's set and unlists it: a tombstone keyed by the namespace.
    ///
    /// ```
    /// # use metacache::config::Settings;
    /// # use metacache::tools::publish::Publisher;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let kafka = metacache::tools::embedded::EmbeddedKafka::start(1, &[("metric-catalog", 1)])?;
    /// # let mut settings = Settings::default();
    /// # settings.kafka.brokers = kafka.bootstrap().to_owned();
    /// let publisher = Publisher::new(&settings)?;
    /// publisher.delete_namespace("scratch").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_namespace(&self, namespace: &str) -> Result<(), PublishError> {
        self.publish(&Event::Metric(MetricOp::Delete {
            namespace: namespace.to_owned(),
        }))
        .await
    }

    /// Produces any typed event (see [`Outgoing::from_event`]).
    ///
    /// ```
    /// # use metacache::config::Settings;
    /// # use metacache::tools::publish::Publisher;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let kafka = metacache::tools::embedded::EmbeddedKafka::start(1, &[("device-metadata", 1), ("metric-catalog", 1)])?;
    /// # let mut settings = Settings::default();
    /// # settings.kafka.brokers = kafka.bootstrap().to_owned();
    /// let publisher = Publisher::new(&settings)?;
    /// for event in metacache::tools::demo::valid_sample_events() {
    ///     publisher.publish(&event).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        self.send(&Outgoing::from_event(event)).await
    }

    /// Validates and produces one record, and waits for the broker's acknowledgement.
    ///
    /// ```
    /// use metacache::model::TopicKind;
    /// use metacache::tools::publish::Outgoing;
    /// # use metacache::config::Settings;
    /// # use metacache::tools::publish::Publisher;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let kafka = metacache::tools::embedded::EmbeddedKafka::start(1, &[("metric-catalog", 1)])?;
    /// # let mut settings = Settings::default();
    /// # settings.kafka.brokers = kafka.bootstrap().to_owned();
    /// let publisher = Publisher::new(&settings)?;
    /// let tombstone = Outgoing { kind: TopicKind::Metric, key: "scratch".into(), payload: None };
    /// publisher.send(&tombstone).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, record: &Outgoing) -> Result<(), PublishError> {
        record.validate(&self.limits)?;
        let delivery = self
            .producer
            .send(self.record(record), Timeout::Never)
            .await;
        delivery.map(drop).map_err(|(e, _)| {
            PublishError::Kafka(format!("{} not delivered: {e}", describe(record)))
        })
    }

    /// Validates one JSON Lines line (see [`parse_line`]) and produces it.
    ///
    /// ```
    /// use metacache::model::TopicKind;
    /// # use metacache::config::Settings;
    /// # use metacache::tools::publish::Publisher;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let kafka = metacache::tools::embedded::EmbeddedKafka::start(1, &[("metric-catalog", 1)])?;
    /// # let mut settings = Settings::default();
    /// # settings.kafka.brokers = kafka.bootstrap().to_owned();
    /// let publisher = Publisher::new(&settings)?;
    /// publisher
    ///     .send_line(TopicKind::Metric, r#"{"op":"add","namespace":"infra","metric_names":["load15"]}"#)
    ///     .await?;
    /// assert!(publisher.send_line(TopicKind::Metric, r#"{"op":"add"}"#).await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn send_line(&self, kind: TopicKind, line: &str) -> Result<(), PublishError> {
        let record = parse_line(kind, line.as_bytes(), &self.limits)?;
        self.send(&record).await
    }

    /// Validates every record first and sends none if one is invalid; then produces them
    /// in order, many in flight at once, and returns how many the broker acknowledged.
    /// On a delivery failure the error says how many were acknowledged before it.
    ///
    /// ```
    /// use metacache::model::{Limits, TopicKind};
    /// # use metacache::config::Settings;
    /// # use metacache::tools::publish::Publisher;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let kafka = metacache::tools::embedded::EmbeddedKafka::start(1, &[("device-metadata", 1), ("metric-catalog", 1)])?;
    /// # let mut settings = Settings::default();
    /// # settings.kafka.brokers = kafka.bootstrap().to_owned();
    /// let publisher = Publisher::new(&settings)?;
    /// let text = b"{\"op\":\"add\",\"namespace\":\"infra\",\"metric_names\":[\"load1\"]}\n{\"tombstone\":\"scratch\"}\n";
    /// let parsed = metacache::tools::publish::parse_lines(TopicKind::Metric, text, &Limits::default());
    /// let records: Vec<_> = parsed.records.into_iter().map(|(_, record)| record).collect();
    /// assert_eq!(publisher.send_all(&records).await?, 2);
    ///
    /// let records: Vec<_> = metacache::tools::demo::valid_sample_events()
    ///     .iter()
    ///     .map(metacache::tools::publish::Outgoing::from_event)
    ///     .collect();
    /// assert_eq!(publisher.send_all(&records).await?, 14);
    /// # Ok(()) }
    /// ```
    pub async fn send_all(&self, records: &[Outgoing]) -> Result<usize, PublishError> {
        for record in records {
            record.validate(&self.limits)?;
        }
        let mut pending: VecDeque<(usize, DeliveryFuture)> = VecDeque::new();
        let mut delivered = 0;
        for (i, record) in records.iter().enumerate() {
            if pending.len() >= MAX_IN_FLIGHT {
                self.settle(&mut pending, records, &mut delivered).await?;
            }
            loop {
                match self.producer.send_result(self.record(record)) {
                    Ok(future) => {
                        pending.push_back((i, future));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        if pending.is_empty() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        } else {
                            self.settle(&mut pending, records, &mut delivered).await?;
                        }
                    }
                    Err((e, _)) => {
                        return Err(PublishError::Kafka(format!(
                            "{} not sent ({delivered} acknowledged before): {e}",
                            describe(record)
                        )))
                    }
                }
            }
        }
        while !pending.is_empty() {
            self.settle(&mut pending, records, &mut delivered).await?;
        }
        Ok(delivered)
    }

    /// Waits for the oldest record in flight.
    async fn settle(
        &self,
        pending: &mut VecDeque<(usize, DeliveryFuture)>,
        records: &[Outgoing],
        delivered: &mut usize,
    ) -> Result<(), PublishError> {
        let Some((i, future)) = pending.pop_front() else {
            return Ok(());
        };
        let failure = match future.await {
            Ok(Ok(_)) => {
                *delivered += 1;
                return Ok(());
            }
            Ok(Err((e, _))) => e.to_string(),
            Err(_) => "the producer was dropped".to_owned(),
        };
        Err(PublishError::Kafka(format!(
            "{} not delivered ({delivered} acknowledged before): {failure}",
            describe(&records[i]),
            delivered = *delivered
        )))
    }

    fn record<'a>(&'a self, record: &'a Outgoing) -> FutureRecord<'a, str, [u8]> {
        let mut out = FutureRecord::to(self.topic(record.kind)).key(record.key.as_str());
        if let Some(payload) = &record.payload {
            out = out.payload(payload.as_slice());
        }
        out
    }
}

fn owned<S: AsRef<str>>(names: &[S]) -> Vec<String> {
    names.iter().map(|n| n.as_ref().to_owned()).collect()
}

/// "the device-topic record keyed \"dev-1\"", for error messages.
fn describe(record: &Outgoing) -> String {
    let what = if record.payload.is_some() {
        "event"
    } else {
        "tombstone"
    };
    let topic = match record.kind {
        TopicKind::Device => "device",
        TopicKind::Metric => "metric-catalog",
    };
    format!("the {topic} {what} keyed {:?}", record.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceMetadata {
        let mut additional = serde_json::Map::new();
        additional.insert("site".into(), "plant 3 ü".into());
        DeviceMetadata {
            device_id: "dev 1 ü".into(),
            datatype_id: "dt-1".into(),
            datatype_name: "temperature".into(),
            datatype_unit: None,
            persist: true,
            last_updated_ms: 1_795_341_600_123,
            additional_properties: additional,
        }
    }

    #[test]
    fn every_typed_event_serializes_to_what_the_daemon_decodes() {
        let limits = Limits::default();
        let events = [
            Event::DeviceUpsert(device().into()),
            Event::DeviceDelete {
                device_id: "dev 1 ü".into(),
            },
            Event::Metric(MetricOp::Replace {
                namespace: "a#b:c".into(),
                metric_names: vec!["x".into(), "y".into()],
            }),
            Event::Metric(MetricOp::Replace {
                namespace: "billing".into(),
                metric_names: vec![],
            }),
            Event::Metric(MetricOp::Add {
                namespace: "billing".into(),
                metric_names: vec!["cpu".into()],
            }),
            Event::Metric(MetricOp::Remove {
                namespace: "billing".into(),
                metric_names: vec!["cpu".into()],
            }),
            Event::Metric(MetricOp::Delete {
                namespace: "billing".into(),
            }),
        ];
        for event in events {
            let record = Outgoing::from_event(&event);
            let decoded = record.validate(&limits).unwrap();
            assert_eq!(decoded, event, "{record:?}");
            // A value decodes to the same event without a key too.
            if let Some(payload) = &record.payload {
                assert_eq!(
                    model::decode_value(record.kind, payload, &limits).unwrap(),
                    event
                );
            }
        }
    }

    #[test]
    fn the_default_namespace_is_spelled_out_in_key_and_payload() {
        let record = Outgoing::from_event(&Event::Metric(MetricOp::Add {
            namespace: String::new(),
            metric_names: vec!["requests".into()],
        }));
        assert_eq!(record.key, "default");
        assert_eq!(
            record.payload.as_deref(),
            Some(&br#"{"op":"add","namespace":"default","metric_names":["requests"]}"#[..])
        );
        assert_eq!(
            record.validate(&Limits::default()).unwrap(),
            Event::Metric(MetricOp::Add {
                namespace: "default".into(),
                metric_names: vec!["requests".into()],
            })
        );
    }

    #[test]
    fn invalid_typed_events_are_refused() {
        let limits = Limits::default();
        let mut bad = device();
        bad.datatype_name = "tab\there".into();
        let reject = Outgoing::from_event(&Event::DeviceUpsert(bad.into()))
            .validate(&limits)
            .unwrap_err();
        assert_eq!(reject.reason, RejectReason::InvalidValue);
        assert_eq!(reject.field.as_deref(), Some("datatype_name"));

        let mut future = device();
        future.last_updated_ms = 253_402_300_800_000; // year 10000
        assert_eq!(
            Outgoing::from_event(&Event::DeviceUpsert(future.into()))
                .validate(&limits)
                .unwrap_err()
                .reason,
            RejectReason::InvalidTimestamp
        );
        let empty = Outgoing::from_event(&Event::DeviceDelete {
            device_id: String::new(),
        });
        assert_eq!(
            empty.validate(&limits).unwrap_err().reason,
            RejectReason::MissingKey
        );
    }

    #[test]
    fn lines_take_their_key_from_the_event() {
        let limits = Limits::default();
        let metric = parse_line(
            TopicKind::Metric,
            b"  {\"op\":\"add\",\"namespace\":\"\",\"metric_names\":[]}\r",
            &limits,
        )
        .unwrap();
        assert_eq!(metric.key, "default");
        assert_eq!(
            metric.payload.as_deref(),
            Some(&b"{\"op\":\"add\",\"namespace\":\"\",\"metric_names\":[]}"[..]),
            "the line is sent as written, trimmed"
        );
        let ns = parse_line(
            TopicKind::Metric,
            br#"{"op":"add","namespace":"a#b:c","metric_names":["x"]}"#,
            &limits,
        )
        .unwrap();
        assert_eq!(ns.key, "a#b:c");
    }

    #[test]
    fn tombstone_lines() {
        let limits = Limits::default();
        let t = parse_line(TopicKind::Metric, br#"{"tombstone":""}"#, &limits).unwrap();
        assert_eq!((t.key.as_str(), t.payload), ("default", None));
        let t = parse_line(
            TopicKind::Device,
            r#"{"tombstone":"dev 1 ü"}"#.as_bytes(),
            &limits,
        )
        .unwrap();
        assert_eq!(t.key, "dev 1 ü");
        let r = parse_line(TopicKind::Device, br#"{"tombstone":""}"#, &limits).unwrap_err();
        assert_eq!(r.reason, RejectReason::MissingKey);
        let r = parse_line(TopicKind::Device, br#"{"tombstone":7}"#, &limits).unwrap_err();
        assert_eq!(
            (r.reason, r.field.as_deref()),
            (RejectReason::WrongType, Some("tombstone"))
        );
        // With other fields it is an ordinary event (and here an invalid one).
        let r = parse_line(TopicKind::Device, br#"{"tombstone":"a","x":1}"#, &limits).unwrap_err();
        assert_eq!(r.reason, RejectReason::MissingField);
    }

    #[test]
    fn bad_lines_are_numbered_and_blank_lines_skipped() {
        let text = b"\n{\"op\":\"add\",\"metric_names\":[\"a\"]}\n  \n{\"op\":1}\n\xff\n";
        let parsed = parse_lines(TopicKind::Metric, text, &Limits::default());
        assert_eq!(parsed.records.len(), 1);
        assert_eq!(parsed.records[0].0, 2);
        let errors: Vec<(usize, RejectReason)> = parsed
            .errors
            .iter()
            .map(|e| (e.line, e.reject.reason))
            .collect();
        assert_eq!(
            errors,
            [(4, RejectReason::WrongType), (5, RejectReason::InvalidUtf8)]
        );
    }
}
