//! The look-ups: `get device|devices|metrics`, `check-metric`, `info`. Each loads the
//! settings, connects with the client crate, and prints text for people or JSON for
//! scripts; the exit code is the answer.

use std::process::ExitCode;

use serde_json::json;

use metacache::client::{
    CacheClient, CacheInfo, ClientError, DeviceEntry, HealthStatus, ListOptions, Order,
};
use metacache::model::DeviceMetadata;

use super::args::{CheckMetricArgs, GetCommand, LogFormat, LookupArgs};
use super::{block_on, exit, init_logging, load};

/// `metacache get device|devices|metrics`.
pub fn get(log_format: Option<LogFormat>, command: GetCommand) -> ExitCode {
    match command {
        GetCommand::Device { id, lookup } => {
            lookup_command(log_format, &lookup, |client, json| async move {
                get_device(&client, &id, json).await
            })
        }
        GetCommand::Devices(args) => {
            let options = ListOptions {
                limit: args.limit,
                offset: args.offset,
                pattern: args.pattern.clone(),
                order: if args.oldest_first {
                    Order::OldestFirst
                } else {
                    Order::NewestFirst
                },
            };
            lookup_command(log_format, &args.lookup, |client, json| async move {
                get_devices(&client, &options, json).await
            })
        }
        GetCommand::Metrics { namespace, lookup } => {
            lookup_command(log_format, &lookup, |client, json| async move {
                get_metrics(&client, &namespace, json).await
            })
        }
    }
}

/// `metacache check-metric NAMESPACE NAME`.
pub fn check_metric_command(log_format: Option<LogFormat>, args: CheckMetricArgs) -> ExitCode {
    lookup_command(log_format, &args.lookup, |client, json| async move {
        check_metric(&client, &args.namespace, &args.name, json).await
    })
}

/// `metacache info`.
pub fn info_command(log_format: Option<LogFormat>, args: &LookupArgs) -> ExitCode {
    lookup_command(log_format, args, |client, json| async move {
        info(&client, json).await
    })
}

/// Loads the settings, connects, runs `body` and turns its outcome into an exit code:
/// `Ok(true)` 0, `Ok(false)` 1 (the answer is no), a client error 3.
fn lookup_command<F, Fut>(log_format: Option<LogFormat>, args: &LookupArgs, body: F) -> ExitCode
where
    F: FnOnce(CacheClient, bool) -> Fut,
    Fut: std::future::Future<Output = Result<bool, ClientError>>,
{
    let settings = match load(args.config.as_deref(), None, args.redis_url.as_deref()) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    init_logging(log_format, &settings.log.format, "warn");
    let json = args.json;
    block_on(async move {
        let client = match CacheClient::from_settings(&settings.redis).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {} ({})", e, settings.redis.redacted_url());
                return ExitCode::from(exit::UNAVAILABLE);
            }
        };
        match body(client, json).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(exit::NO),
            Err(ClientError::InvalidArgument(why)) => {
                eprintln!("usage: {why}");
                ExitCode::from(exit::CONFIG)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(exit::UNAVAILABLE)
            }
        }
    })
}

async fn get_device(client: &CacheClient, id: &str, json: bool) -> Result<bool, ClientError> {
    let device = client.get_device(id).await?;
    match (&device, json) {
        (Some(device), true) => println!("{}", device.to_normalized_json()),
        (Some(device), false) => print!("{}", device_text(device)),
        (None, true) => println!("null"),
        (None, false) => {}
    }
    if device.is_none() {
        eprintln!("device {id:?} is not in the cache");
    }
    Ok(device.is_some())
}

/// A device as aligned `field  value` lines; unknown fields as JSON unless plain strings.
fn device_text(device: &DeviceMetadata) -> String {
    let mut rows: Vec<(String, String)> = vec![
        ("device_id".into(), device.device_id.clone()),
        ("datatype_id".into(), device.datatype_id.clone()),
        ("datatype_name".into(), device.datatype_name.clone()),
        (
            "datatype_unit".into(),
            device
                .datatype_unit
                .clone()
                .unwrap_or_else(|| "(none)".into()),
        ),
        ("persist".into(), device.persist.to_string()),
        ("last_updated".into(), device.last_updated_rfc3339()),
    ];
    for (name, value) in &device.additional_properties {
        let shown = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        rows.push((name.clone(), shown));
    }
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect()
}

fn entry_json(entry: &DeviceEntry) -> serde_json::Value {
    json!({
        "device_id": entry.id,
        "last_updated": entry.last_updated(),
        "last_updated_ms": entry.last_updated_ms,
    })
}

async fn get_devices(
    client: &CacheClient,
    options: &ListOptions,
    json: bool,
) -> Result<bool, ClientError> {
    let page = client.list_devices(options).await?;
    if json {
        let entries: Vec<_> = page.iter().map(entry_json).collect();
        println!("{}", serde_json::Value::Array(entries));
    } else {
        let width = page.iter().map(|e| e.id.chars().count()).max().unwrap_or(0);
        for entry in &page {
            println!("{:width$}  {}", entry.id, entry.last_updated());
        }
        if page.is_empty() {
            eprintln!("no devices on this page");
        }
    }
    Ok(true)
}

async fn get_metrics(
    client: &CacheClient,
    namespace: &str,
    json: bool,
) -> Result<bool, ClientError> {
    let names = client.metric_names(namespace).await?;
    // Empty and unknown differ: `replace []` leaves a listed namespace without names, a
    // namespace never written (or deleted, or a typo) is not listed at all.
    let known = !names.is_empty() || client.has_namespace(namespace).await?;
    if json {
        println!("{}", json!(names));
    } else {
        for name in &names {
            println!("{name}");
        }
    }
    let shown = metacache::model::namespace_or_default(namespace);
    if !known {
        eprintln!("unknown namespace {shown:?}: not in metric_namespaces");
    } else if names.is_empty() {
        eprintln!("namespace {shown:?} is known and has no metric names");
    }
    Ok(known)
}

async fn check_metric(
    client: &CacheClient,
    namespace: &str,
    name: &str,
    json: bool,
) -> Result<bool, ClientError> {
    let valid = client.is_valid_metric_name(namespace, name).await?;
    let shown_namespace = metacache::model::namespace_or_default(namespace);
    if json {
        println!(
            "{}",
            json!({"namespace": shown_namespace, "name": name, "valid": valid})
        );
    } else if valid {
        println!("valid: {name:?} is a metric name in namespace {shown_namespace:?}");
    } else {
        println!("not valid: {name:?} is not a metric name in namespace {shown_namespace:?}");
    }
    Ok(valid)
}

async fn info(client: &CacheClient, json: bool) -> Result<bool, ClientError> {
    let redis = client.redacted_url();
    let health = client.health().await;
    let cache = client.cache_info().await;
    if json {
        let mut out = json!({ "redis": redis, "health": health_json(&health) });
        if let Ok(cache) = &cache {
            let entry = |e: &Option<DeviceEntry>| e.as_ref().map(entry_json);
            out["total_devices"] = json!(cache.total_devices);
            out["oldest_entry"] = json!(entry(&cache.oldest_entry));
            out["newest_entry"] = json!(entry(&cache.newest_entry));
            out["metric_namespaces"] = json!(cache.metric_namespaces);
            out["memory_usage_bytes"] = json!(cache.memory_usage_bytes);
        }
        println!("{out}");
    } else {
        println!("redis              {redis}");
        println!("health             {}: {}", health.status, health.message);
        if let Ok(cache) = &cache {
            print!("{}", cache_text(cache));
        }
    }
    cache.map(|_| true)
}

fn health_json(health: &HealthStatus) -> serde_json::Value {
    let timestamp = time::OffsetDateTime::from(health.timestamp)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    json!({
        "status": health.status.as_str(),
        "message": health.message,
        "timestamp": timestamp,
        "latency_ms": health.latency.map(|l| l.as_secs_f64() * 1000.0),
        "maxmemory_policy": health.maxmemory_policy,
    })
}

fn cache_text(cache: &CacheInfo) -> String {
    let entry = |e: &Option<DeviceEntry>| match e {
        Some(e) => format!("{}  {}", e.id, e.last_updated()),
        None => "-".into(),
    };
    let memory = match cache.memory_usage_bytes {
        Some(bytes) => format!(
            "{:.1} MiB ({bytes} bytes, the whole Redis server)",
            bytes as f64 / (1024.0 * 1024.0)
        ),
        None => "unknown (INFO not allowed)".into(),
    };
    format!(
        "devices            {}\n  oldest           {}\n  newest           {}\n\
         metric namespaces  {}\nmemory used        {memory}\n",
        cache.total_devices,
        entry(&cache.oldest_entry),
        entry(&cache.newest_entry),
        cache.metric_namespaces,
    )
}
