//! Health, metrics, the OpenAPI document, and errors for requests no route takes.

use gridpatrol_tests::{Backend, TestApp, both_backends};

async fn health_metrics_and_unknown_routes(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let health = app.get("/healthz", None).await;
    let body = health.assert_ok();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["grids"], 273);
    let expected = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(body["database"], expected);
    let request_id = health
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    assert!(
        request_id.is_some_and(|id| id.len() >= 32),
        "every response names its request id"
    );

    app.get("/v1/grids/locate?lon=108.52&lat=25.93", None)
        .await
        .assert_ok();
    let metrics = app.get("/metrics", None).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text.contains("gridpatrol_http_requests_total{method=\"GET\",route=\"/v1/grids/locate\",status=\"200\"} 1"),
        "{}",
        metrics.text
    );
    assert!(
        metrics.text.contains("gridpatrol_grids 273"),
        "{}",
        metrics.text
    );

    app.get("/v1/no-such-thing", None)
        .await
        .assert_error(404, "not_found");
    let wrong_method = app.delete("/v1/grids/locate", None).await;
    assert!(
        matches!(wrong_method.status, 404 | 405),
        "{}",
        wrong_method.text
    );
    assert!(
        wrong_method.body["error"].is_string(),
        "{}",
        wrong_method.text
    );
}

/// Issue 21: `GET /v1/users?role=inspector` was 231 KB and never compressed (enrolling four
/// phones over 40 kbit/s took 73 s). Answers are gzip or deflate as `Accept-Encoding` asks;
/// images and the sync's own DEFLATE are left alone. Readiness is apart from liveness.
async fn answers_are_compressed_and_readiness_is_its_own(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let admin = app.token("admin-522632").await;
    // A client that shows the bytes as they travel (no decompression of its own).
    let raw = reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("client");
    let get = |encoding: &'static str| {
        raw.get(format!("{}/v1/users?role=inspector", app.base))
            .bearer_auth(&admin)
            .header("accept-encoding", encoding)
            .send()
    };
    let plain = get("identity").await.expect("plain");
    assert!(plain.headers().get("content-encoding").is_none());
    let plain_bytes = plain.bytes().await.expect("bytes").len();
    for encoding in ["gzip", "deflate"] {
        let packed = get(encoding).await.expect("packed");
        assert_eq!(
            packed
                .headers()
                .get("content-encoding")
                .and_then(|v| v.to_str().ok()),
            Some(encoding)
        );
        let bytes = packed.bytes().await.expect("bytes").len();
        assert!(
            bytes * 5 < plain_bytes,
            "{encoding}: {bytes} of {plain_bytes} bytes"
        );
    }
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["ready"], true);
    assert_eq!(ready.body["disk"], true);
}

both_backends!(
    health_metrics_and_unknown_routes,
    answers_are_compressed_and_readiness_is_its_own,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_openapi_equals_the_committed_file() {
    let app = TestApp::empty(Backend::Sqlite).await;
    let served = app.get("/openapi.json", None).await;
    let served = served.assert_ok();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml"))
            .expect("openapi.yaml at the repository root");
    let generated = gridpatrol_server::openapi_yaml();
    assert!(
        committed == generated,
        "openapi.yaml is stale: run `cargo run -p gridpatrol-server -- openapi --output openapi.yaml`"
    );
    let generated_json: serde_json::Value =
        serde_json::from_str(&gridpatrol_server::openapi().to_json().expect("json"))
            .expect("parse");
    assert_eq!(
        served, &generated_json,
        "the served spec differs from the generated one"
    );
}

/// Every path in openapi.yaml is called by some test in this directory.
#[test]
fn every_endpoint_in_the_spec_has_a_test() {
    let spec = gridpatrol_server::openapi();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api");
    let mut sources = String::new();
    for entry in std::fs::read_dir(dir).expect("test dir") {
        let path = entry.expect("entry").path();
        sources.push_str(&std::fs::read_to_string(path).expect("read"));
    }
    // `{id}`, `{user}`, `{role_id}` … all become `{}`, in the spec and in format! strings alike.
    let normalize = |text: &str| {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find('}') {
                Some(close)
                    if after[..close]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    out.push_str("{}");
                    rest = &after[close + 1..];
                }
                _ => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    };
    let sources = normalize(&sources);
    let mut missing = Vec::new();
    for path in spec.paths.paths.keys() {
        let path = normalize(path);
        let called = [format!("{path}\""), format!("{path}?")]
            .iter()
            .any(|w| sources.contains(w.as_str()));
        if !called {
            missing.push(path.clone());
        }
    }
    assert!(missing.is_empty(), "endpoints without a test: {missing:?}");
}

/// Ends every connection the server holds to its PostgreSQL database, as a database restart or a
/// proxy closing idle connections does.
fn drop_server_connections(app: &TestApp) {
    use diesel::prelude::*;
    let (_, name) = app.db.url.rsplit_once('/').expect("database name");
    let mut admin = diesel::PgConnection::establish(&gridpatrol_tests::postgres_admin_url())
        .expect("admin connection");
    let ended = diesel::sql_query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind::<diesel::sql_types::Text, _>(name)
    .execute(&mut admin)
    .expect("terminate");
    assert!(ended > 0, "the server had connections to end");
}

/// Pooled connections are not pinged before every use (a round trip of its own) but only when
/// idle for over a second, or once some connection was found lost: lost connections are still
/// replaced, at worst after the one request that found them lost answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_database_connections_are_replaced() {
    let app = TestApp::with_demo(Backend::Postgres).await;
    let token = app.token("admin-522632").await;
    let feed = "/v1/feed?after=0&limit=1";
    app.get(feed, Some(&token)).await.assert_ok();

    // Idle for over a second: pinged when checked out, found gone, replaced.
    drop_server_connections(&app);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    app.get(feed, Some(&token)).await.assert_ok();

    // Lost right after a use: that request may fail (a 503 that says to try again). It finds one
    // connection lost, and every other one is then pinged before its next use, so the next
    // requests do not fail on the pool's other dead connections.
    // Several connections used at once, so that the pool holds several recently used ones.
    for response in
        futures_util::future::join_all((0..8).map(|_| app.get(feed, Some(&token)))).await
    {
        response.assert_ok();
    }
    drop_server_connections(&app);
    let first = app.get(feed, Some(&token)).await;
    if first.status != 200 {
        first.assert_error(503, "database_unavailable");
    }
    for _ in 0..5 {
        app.get(feed, Some(&token)).await.assert_ok();
    }
}
