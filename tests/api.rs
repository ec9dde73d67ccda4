//! The HTTP read API (`/v1`): off without a token, 401 without the right one, the same
//! answers as the client crate, bounded pages, JSON errors; and the checked-in OpenAPI
//! document lists exactly the routes the daemon serves, each of which answers.

mod support;

use std::net::SocketAddr;

use serde_json::Value;
use support::*;

const TOKEN: &str = "s3cret-token-of-32-characters-xx";

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (status, body) = http_get_with(addr, path, &[&auth]).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, json)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// A daemon over a cache seeded with the README's demo state, the API on.
async fn daemon_with_api(h: &Harness, dir: &tempfile::TempDir) -> (Running, SocketAddr) {
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    h.redis.seed_demo("").expect("seeded");
    let mut settings = h.settings();
    settings.api.token_file = token_file.display().to_string();
    settings.api.max_page = 50;
    let daemon = h.start_daemon(settings);
    let addr = daemon.http().await;
    (daemon, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_the_client_does_and_only_with_the_token() {
    let h = Harness::start(1);
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = daemon_with_api(&h, &dir).await;

    // No token, a wrong one, another scheme: 401 with a JSON error, and nothing read.
    for headers in [
        vec![],
        vec!["Authorization: Bearer wrong-token-of-32-characters-xxx"],
        vec!["Authorization: Basic czNjcmV0"],
    ] {
        let (status, body) = http_get_with(addr, "/v1/devices/dev-42", &headers).await;
        assert_eq!(status, 401, "{headers:?}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error_code(&body), "unauthorized");
        assert!(!body.to_string().contains(TOKEN));
    }

    let client = metacache::client::CacheClient::connect(&h.redis.url())
        .await
        .unwrap();
    // The device exactly as stored, field order included.
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (status, device) = http_get_with(addr, "/v1/devices/dev-42", &[&auth]).await;
    assert_eq!(status, 200);
    let direct = client.get_device("dev-42").await.unwrap().unwrap();
    assert_eq!(device, direct.to_normalized_json());

    let (status, missing) = get(addr, "/v1/devices/dev-45").await;
    assert_eq!((status, error_code(&missing)), (404, "not_found"));

    let (status, page) = get(addr, "/v1/devices?order=oldest&limit=2").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = page["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dev-43", "dev-44"]);
    assert_eq!(
        page["devices"][0]["last_updated"],
        "2026-11-22T10:00:00.000Z"
    );
    let (_, matched) = get(addr, "/v1/devices?pattern=dev-4%5B24%5D&offset=1").await;
    assert_eq!(matched["devices"][0]["device_id"], "dev-44");
    let (status, too_many) = get(addr, "/v1/devices?limit=51").await;
    assert_eq!((status, error_code(&too_many)), (400, "invalid_argument"));
    let (status, bad) = get(addr, "/v1/devices?pattern=dev-%5B").await;
    assert_eq!((status, error_code(&bad)), (400, "invalid_argument"));

    let (status, batch) = get(addr, "/v1/devices?id=dev-42&id=dev-43&id=dev-99").await;
    assert_eq!(status, 200);
    let found = batch["devices"].as_object().unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(found["dev-43"]["datatype_unit"], "%");

    let (status, info) = get(addr, "/v1/cache/info").await;
    assert_eq!(status, 200);
    assert_eq!(info["total_devices"], 3);
    assert_eq!(info["newest_device_id"], "dev-42");
    assert!(info["stats"]["topics"].is_object(), "{info}");

    let (_, namespaces) = get(addr, "/v1/namespaces").await;
    assert_eq!(
        namespaces["namespaces"],
        serde_json::json!(["billing", "default", "infra"])
    );
    let (_, names) = get(addr, "/v1/namespaces/billing/metric-names").await;
    assert_eq!(names["names"], serde_json::json!(["disk", "mem"]));
    let (_, valid) = get(
        addr,
        "/v1/namespaces/billing/metric-names/valid?name=disk&name=cpu",
    )
    .await;
    assert_eq!(
        valid["valid"],
        serde_json::json!({"cpu": false, "disk": true})
    );
    let (status, none) = get(addr, "/v1/namespaces/billing/metric-names/valid").await;
    assert_eq!((status, error_code(&none)), (400, "invalid_argument"));
    let (status, reserved) = get(addr, "/v1/namespaces/device:x/metric-names").await;
    assert_eq!((status, error_code(&reserved)), (400, "invalid_argument"));

    let (status, health) = get(addr, "/v1/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_routes_served() {
    let h = Harness::start(1);
    let dir = tempfile::tempdir().unwrap();
    let (daemon, addr) = daemon_with_api(&h, &dir).await;

    // Served without a token, and the same as the checked-in file.
    let (status, served) = http_get(addr, "/v1/openapi.json").await;
    assert_eq!(status, 200);
    let file = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/side/openapi.json"),
    )
    .unwrap();
    let doc: Value = serde_json::from_str(&file).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&served).unwrap(), doc);

    let documented: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let served_routes = [
        "/v1/devices",
        "/v1/devices/{id}",
        "/v1/cache/info",
        "/v1/health",
        "/v1/namespaces",
        "/v1/namespaces/{namespace}/metric-names",
        "/v1/namespaces/{namespace}/metric-names/valid",
        "/v1/openapi.json",
    ];
    let mut sorted = served_routes.to_vec();
    sorted.sort_unstable();
    let mut documented_sorted = documented.clone();
    documented_sorted.sort_unstable();
    assert_eq!(documented_sorted, sorted);
    // Every documented route answers 200 with the demo's values filled in.
    for path in documented {
        let concrete = path
            .replace("{id}", "dev-42")
            .replace("{namespace}", "billing")
            .replace("/valid", "/valid?name=disk");
        let (status, body) = get(addr, &concrete).await;
        assert_eq!(status, 200, "{concrete}: {body}");
        assert!(doc["paths"][path]["get"]["responses"]["200"].is_object());
    }
    // A route not in the document is not served.
    let (status, _) = http_get_with(
        addr,
        "/v1/devices/dev-42/history",
        &[&format!("Authorization: Bearer {TOKEN}")],
    )
    .await;
    assert_eq!(status, 404);
    daemon.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_file_the_api_is_off() {
    let h = Harness::start(1);
    let daemon = h.start_daemon(h.settings());
    let addr = daemon.http().await;
    let (status, _) = http_get_with(
        addr,
        "/v1/devices/dev-42",
        &[&format!("Authorization: Bearer {TOKEN}")],
    )
    .await;
    assert_eq!(status, 404);
    daemon.stop().await.expect("clean stop");
}
