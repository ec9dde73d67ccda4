//! The HTTP read API under `/v1`, for services that have no Redis credentials: the same
//! reads as the client crate (it is served through a [`CacheClient`]), never on the write
//! path, off unless `api.token_file` names a token. Every route but the OpenAPI document
//! wants `Authorization: Bearer <token>`, compared in constant time. Errors are JSON:
//! `{"error": {"code", "message"}}`.
//!
//! Only `GET`: a batch of devices is `?id=a&id=b` on `/v1/devices` (a path segment would
//! collide with a device named like it). Pages and batches are bounded by `api.max_page`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metacache_client::{CacheClient, ClientError, DeviceEntry, ListOptions, Order, RedisSettings};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::model::namespace_or_default;
use crate::side::http::report;
use crate::side::monitor::Observed;
use crate::stats::Stats;

/// The OpenAPI document of these routes, as checked in.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Names the most ids one `is-valid` question may carry.
const MAX_NAMES: usize = 1000;

pub struct ApiState {
    token: String,
    max_page: usize,
    redis: RedisSettings,
    /// Opened on the first request and kept; a failed open is tried again next time.
    client: tokio::sync::Mutex<Option<CacheClient>>,
    stats: Arc<Stats>,
    observed: Arc<Observed>,
    topics: [String; 2],
}

impl ApiState {
    pub fn new(
        token: String,
        max_page: usize,
        redis: RedisSettings,
        stats: Arc<Stats>,
        observed: Arc<Observed>,
        topics: [String; 2],
    ) -> Self {
        ApiState {
            token,
            max_page,
            redis,
            client: tokio::sync::Mutex::new(None),
            stats,
            observed,
            topics,
        }
    }

    async fn client(&self) -> Result<CacheClient, ApiError> {
        let mut held = self.client.lock().await;
        if let Some(client) = held.as_ref() {
            return Ok(client.clone());
        }
        let client = CacheClient::from_settings(&self.redis).await?;
        *held = Some(client.clone());
        Ok(client)
    }
}

/// The `/v1` routes.
pub fn routes(state: Arc<ApiState>) -> Router {
    let guarded = Router::new()
        .route("/v1/devices", get(devices))
        .route("/v1/devices/{id}", get(device))
        .route("/v1/cache/info", get(cache_info))
        .route("/v1/health", get(health))
        .route("/v1/namespaces", get(namespaces))
        .route("/v1/namespaces/{namespace}/metric-names", get(metric_names))
        .route(
            "/v1/namespaces/{namespace}/metric-names/valid",
            get(valid_names),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authorized,
        ))
        .with_state(state);
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .merge(guarded)
}

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        let (status, code) = match &e {
            ClientError::Connection(_) | ClientError::Timeout(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            ClientError::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_entry"),
            ClientError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            ClientError::Redis(_) => (StatusCode::BAD_GATEWAY, "redis_error"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

async fn authorized(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant time over the token's bytes: the comparison says nothing about how much of
    // a guess was right.
    let same: bool = given.as_bytes().ct_eq(state.token.as_bytes()).into();
    if given.is_empty() || !same {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <the token in api.token_file>",
        )
        .into_response();
    }
    next.run(request).await
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Query parameters in order, repeated ones kept.
fn params(query: Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn number(params: &[(String, String)], name: &str, default: usize) -> Result<usize, ApiError> {
    match params.iter().rev().find(|(k, _)| k == name) {
        None => Ok(default),
        Some((_, v)) => v
            .parse()
            .map_err(|_| ApiError::bad(format!("{name} must be a whole number, got {v:?}"))),
    }
}

fn entry(e: DeviceEntry) -> Value {
    json!({"device_id": e.id, "last_updated": e.last_updated()})
}

/// The device as stored: the normalized JSON, its field order kept (a `Value` would sort
/// the fields).
fn device_json(device: &crate::model::DeviceMetadata) -> Result<Box<RawValue>, ApiError> {
    RawValue::from_string(device.to_normalized_json())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// `GET /v1/devices`: a page of the index (`limit`, `offset`, `pattern`, `order`), or with
/// `id` parameters the devices of that batch.
async fn devices(
    State(state): State<Arc<ApiState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = params(query);
    let ids: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "id")
        .map(|(_, v)| v.as_str())
        .collect();
    let client = state.client().await?;
    if !ids.is_empty() {
        if ids.len() > state.max_page {
            return Err(ApiError::bad(format!(
                "at most {} ids per request (api.max_page), got {}",
                state.max_page,
                ids.len()
            )));
        }
        let found = client.get_devices(&ids).await?;
        let mut devices = BTreeMap::new();
        for (id, device) in found {
            devices.insert(id, device_json(&device)?);
        }
        return Ok(Json(json!({ "devices": devices })));
    }
    let limit = number(&params, "limit", state.max_page.min(100))?;
    let offset = number(&params, "offset", 0)?;
    if limit > state.max_page {
        return Err(ApiError::bad(format!(
            "limit must be at most {} (api.max_page), got {limit}",
            state.max_page
        )));
    }
    let order = match params.iter().rev().find(|(k, _)| k == "order") {
        None => Order::NewestFirst,
        Some((_, v)) if v == "newest" => Order::NewestFirst,
        Some((_, v)) if v == "oldest" => Order::OldestFirst,
        Some((_, v)) => {
            return Err(ApiError::bad(format!(
                "order must be newest or oldest, got {v:?}"
            )))
        }
    };
    let pattern = params
        .iter()
        .rev()
        .find(|(k, _)| k == "pattern")
        .map(|(_, v)| v.clone());
    let page = client
        .list_devices(&ListOptions {
            limit,
            offset,
            pattern,
            order,
        })
        .await?;
    let devices: Vec<Value> = page.into_iter().map(entry).collect();
    Ok(Json(
        json!({"devices": devices, "limit": limit, "offset": offset}),
    ))
}

/// `GET /v1/devices/{id}`.
async fn device(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Box<RawValue>>, ApiError> {
    match state.client().await?.get_device(&id).await? {
        Some(device) => Ok(Json(device_json(&device)?)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("device {id:?} is not cached"),
        )),
    }
}

/// `GET /v1/cache/info`: the client's figures and the daemon's `/stats`.
async fn cache_info(State(state): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let info = state.client().await?.cache_info().await?;
    let stats = serde_json::to_value(report(&state.stats, &state.observed, &state.topics))
        .unwrap_or(Value::Null);
    Ok(Json(json!({
        "total_devices": info.total_devices,
        "metric_namespaces": info.metric_namespaces,
        "memory_usage_bytes": info.memory_usage_bytes,
        "oldest_device_id": info.oldest_entry.as_ref().map(|e| e.id.clone()),
        "oldest_entry_timestamp": info.oldest_entry.as_ref().map(DeviceEntry::last_updated),
        "newest_device_id": info.newest_entry.as_ref().map(|e| e.id.clone()),
        "newest_entry_timestamp": info.newest_entry.as_ref().map(DeviceEntry::last_updated),
        "stats": stats,
    })))
}

/// `GET /v1/health`: whether Redis can serve the cache (the client's verdict).
async fn health(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let verdict = match state.client().await {
        Ok(client) => client.health().await,
        Err(e) => {
            return Json(json!({
                "status": "unhealthy", "message": e.message, "timestamp": timestamp,
                "latency_ms": null, "maxmemory_policy": null,
            }))
        }
    };
    Json(json!({
        "status": verdict.status.as_str(),
        "message": verdict.message,
        "timestamp": timestamp,
        "latency_ms": verdict.latency.map(|l| l.as_secs_f64() * 1000.0),
        "maxmemory_policy": verdict.maxmemory_policy,
    }))
}

/// `GET /v1/namespaces`.
async fn namespaces(State(state): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let namespaces = state.client().await?.namespaces().await?;
    Ok(Json(json!({ "namespaces": namespaces })))
}

/// `GET /v1/namespaces/{namespace}/metric-names`.
async fn metric_names(
    State(state): State<Arc<ApiState>>,
    Path(namespace): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let namespace = namespace_or_default(&namespace).to_owned();
    let names = state.client().await?.metric_names(&namespace).await?;
    Ok(Json(json!({"namespace": namespace, "names": names})))
}

/// `GET /v1/namespaces/{namespace}/metric-names/valid?name=a&name=b`.
async fn valid_names(
    State(state): State<Arc<ApiState>>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let namespace = namespace_or_default(&namespace).to_owned();
    let params = params(query);
    let names: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "name")
        .map(|(_, v)| v.as_str())
        .collect();
    if names.is_empty() || names.len() > MAX_NAMES {
        return Err(ApiError::bad(format!(
            "give 1 to {MAX_NAMES} name parameters, got {}",
            names.len()
        )));
    }
    let answers = state
        .client()
        .await?
        .is_valid_metric_names(&namespace, &names)
        .await?;
    let valid: BTreeMap<&str, bool> = names.iter().copied().zip(answers).collect();
    Ok(Json(json!({"namespace": namespace, "valid": valid})))
}
