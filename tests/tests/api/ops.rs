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
    let metrics = app
        .get("/metrics", Some(gridpatrol_tests::METRICS_TOKEN))
        .await;
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
    app.delete("/v1/grids/locate", None)
        .await
        .assert_error(405, "method_not_allowed");
}

/// Issue 22, finding 7: a path of the API asked with a method its OpenAPI document does not
/// declare was 404; it is 405 with `Allow` and the usual error body. Paths that are not the
/// API's stay 404.
async fn undeclared_methods_are_405_with_allow(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let client = gridpatrol_tests::http_client();
    let admin = app.token("admin-522632").await;
    for (method, path, allow) in [
        ("TRACE", "/healthz", "GET"),
        ("HEAD", "/metrics", "GET"),
        ("DELETE", "/v1/grids/locate", "GET"),
        ("PUT", "/v1/users/7", "GET"),
        ("GET", "/v1/auth/login", "POST"),
        ("PATCH", "/v1/users", "GET, POST"),
        ("DELETE", "/v1/photos/uploads", "POST, OPTIONS"),
        ("GET", "/v1/compliance/weeks/2026-W48/signoff", "POST"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        // With and without a token: the answer does not depend on who asks.
        for token in [None, Some(admin.as_str())] {
            let mut request = client.request(method.clone(), format!("{}{path}", app.base));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let reply = app.send(request).await;
            assert_eq!(reply.status, 405, "{method} {path}: {}", reply.text);
            if method != reqwest::Method::HEAD {
                reply.assert_error(405, "method_not_allowed");
            }
            assert_eq!(
                reply.headers.get("allow").and_then(|v| v.to_str().ok()),
                Some(allow),
                "{method} {path}"
            );
        }
    }
    for path in ["/v1/no-such-thing", "/v1/users/7/nothing", "/v2/users"] {
        let reply = app
            .send(client.request(reqwest::Method::TRACE, format!("{}{path}", app.base)))
            .await;
        reply.assert_error(404, "not_found");
        assert!(reply.headers.get("allow").is_none(), "{path}");
    }
}

/// Issue 22, finding 7: the times the OpenAPI document calls `date-time` were sent without an
/// offset (`2026-12-07T09:38:09.304865`), which RFC 3339 requires; they are UTC with `Z`.
async fn times_carry_their_offset(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let admin = app.token("admin-522632").await;
    let inspector = app.user_id("inspector-522632100001-1").await;
    // RFC 3339, UTC, and the right instant: `after` from now, give or take five minutes.
    let utc = |value: &serde_json::Value, what: &str, after: chrono::Duration| {
        let text = value.as_str().unwrap_or_else(|| panic!("{what}: {value}"));
        let at = chrono::DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("{what}: {text} is not RFC 3339: {e}"));
        assert!(text.ends_with('Z'), "{what}: {text} is not UTC");
        let expected = chrono::Utc::now() + after;
        assert!(
            (at.to_utc() - expected).num_minutes().abs() <= 5,
            "{what}: {text}, expected about {expected}"
        );
    };
    let now = chrono::Duration::zero();
    let refresh = chrono::Duration::days(gridpatrol_tests::serve_config().refresh_token_days);
    let code = app
        .post(
            &format!("/v1/users/{inspector}/enrollment-codes"),
            Some(&admin),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(code.status, 201, "{}", code.text);
    utc(
        &code.body["expires_at"],
        "EnrollmentCode.expires_at",
        chrono::Duration::hours(24),
    );
    let pair = app.enroll_phone(&admin, inspector, "红米 Note 12").await;
    utc(
        &pair["refresh_expires_at"],
        "TokenPair.refresh_expires_at",
        refresh,
    );
    let device = pair["device_id"].as_i64().expect("device id");
    let revoked = app
        .post(
            &format!("/v1/devices/{device}/revoke"),
            Some(&admin),
            &serde_json::json!({"reason": "phone lost"}),
        )
        .await;
    let revoked = revoked.assert_ok();
    utc(&revoked["enrolled_at"], "DeviceView.enrolled_at", now);
    utc(&revoked["revoked_at"], "DeviceView.revoked_at", now);
    let devices = app
        .get(&format!("/v1/users/{inspector}/devices"), Some(&admin))
        .await;
    let devices = devices.assert_ok();
    let listed = devices
        .as_array()
        .and_then(|all| all.iter().find(|d| d["id"] == device))
        .expect("the revoked device is listed");
    assert_eq!(listed["revoked_at"], revoked["revoked_at"]);
    let login = app.login("admin-522632", "gridpatrol-demo").await;
    utc(
        &login["refresh_expires_at"],
        "TokenPair.refresh_expires_at",
        refresh,
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

/// Issue 22, finding 6: no `nosniff`, no `Referrer-Policy`, no `Cache-Control: no-store` on
/// token answers and exports; `/metrics` public; the console cookie's `Secure` flag following
/// a client-sent `X-Forwarded-Proto`.
async fn answers_are_hardened_and_metrics_need_the_scrape_token(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let header = |resp: &gridpatrol_tests::Resp, name: &str| {
        resp.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let signed_in = app
        .send(app.client.post(format!("{}/v1/auth/login", app.base)).json(
            &serde_json::json!({"username": "leader-522632100", "password": gridpatrol_tests::PASSWORD}),
        ))
        .await;
    let token = signed_in.assert_ok()["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let week = "2026-W48";
    let export = app
        .get(
            &format!("/v1/compliance/weeks/{week}/export?format=csv"),
            Some(&token),
        )
        .await;
    assert_eq!(export.status, 200, "{}", export.text);
    for resp in [&signed_in, &export, &app.get("/healthz", None).await] {
        assert_eq!(
            header(resp, "x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(
            header(resp, "referrer-policy").as_deref(),
            Some("no-referrer")
        );
        assert_eq!(header(resp, "x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(header(resp, "cache-control").as_deref(), Some("no-store"));
    }

    // Metrics: the scraper's token, or the operator; nobody else.
    app.get("/metrics", None)
        .await
        .assert_error(401, "missing_token");
    app.get("/metrics", Some("not-the-scrape-token"))
        .await
        .assert_error(401, "invalid_token");
    let admin = app.token("admin-522632").await;
    app.get("/metrics", Some(&admin))
        .await
        .assert_error(403, "role_required");
    let metrics = app
        .get("/metrics", Some(gridpatrol_tests::METRICS_TOKEN))
        .await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text.contains("gridpatrol_grids 273"));

    // The console's cookies are Secure only when the browser really came over HTTPS: a client
    // that says so itself is not believed; a configured reverse proxy is.
    let login_cookie = |app: &TestApp| {
        let request = app
            .client
            .get(format!("{}/console/login", app.base))
            .header("x-forwarded-proto", "https")
            .header("forwarded", "proto=https");
        async move {
            let resp = request.send().await.expect("login page");
            assert_eq!(resp.status(), 200);
            resp.headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().expect("cookie").to_string())
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let cookie = login_cookie(&app).await;
    assert!(!cookie.is_empty() && !cookie.contains("Secure"), "{cookie}");
    let behind_proxy = app
        .sharing_database(gridpatrol_server::config::ServeConfig {
            trusted_proxies: vec!["127.0.0.1".parse().expect("ip")],
            ..gridpatrol_tests::serve_config()
        })
        .await;
    let cookie = login_cookie(&behind_proxy).await;
    assert!(cookie.contains("Secure"), "{cookie}");

    // The same for the client address that sign-in limits and the audit log go by: a forged
    // `X-Forwarded-For` is ignored; a trusted proxy's last hop is believed.
    let wrong_password = |app: &TestApp| {
        app.client
            .post(format!("{}/v1/auth/login", app.base))
            .header("x-forwarded-for", "198.51.100.9, 203.0.113.7")
            .json(
                &serde_json::json!({"username": "leader-522632100", "password": "wrong-password"}),
            )
            .send()
    };
    assert_eq!(wrong_password(&app).await.expect("login").status(), 401);
    assert_eq!(
        wrong_password(&behind_proxy).await.expect("login").status(),
        401
    );
    let events = app
        .get("/v1/security-events?kind=sign_in_failed", Some(&admin))
        .await;
    let mut clients: Vec<String> = events
        .assert_ok()
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["client"].as_str().map(str::to_string))
        .collect();
    clients.sort();
    assert_eq!(clients, vec!["127.0.0.1", "203.0.113.7"]);
}

/// Issue 22, finding 6: `rotate-signing-key --retire-previous` (after a key leaked) took effect
/// only when the servers restarted. They read the keys every 10 s: a retired key's tokens stop
/// working, and the new key signs, without a restart.
async fn a_retired_signing_key_stops_working_without_a_restart(backend: Backend) {
    use gridpatrol_server::auth::tokens;
    let app = TestApp::with_demo_serving(
        backend,
        gridpatrol_server::config::ServeConfig {
            jwt_secret: None,
            ..gridpatrol_tests::serve_config()
        },
    )
    .await;
    let old = app.token("leader-522632100").await;
    app.get("/v1/me", Some(&old)).await.assert_ok();
    let old_kid = app.state.keys.current_kid();
    // What the command does, on the database the server uses.
    let new_kid = app
        .with_conn(|conn| {
            let kid = tokens::new_signing_key(conn)?;
            tokens::retire_signing_keys_except(conn, &kid)?;
            Ok(kid)
        })
        .await;
    let started = std::time::Instant::now();
    loop {
        let me = app.get("/v1/me", Some(&old)).await;
        if me.status == 401 {
            me.assert_error(401, "invalid_token");
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the leaked key still works"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_ne!(old_kid, new_kid);
    assert_eq!(app.state.keys.current_kid(), new_kid);
    let fresh = app.token("leader-522632100").await;
    app.get("/v1/me", Some(&fresh)).await.assert_ok();
}

both_backends!(
    a_retired_signing_key_stops_working_without_a_restart,
    health_metrics_and_unknown_routes,
    answers_are_compressed_and_readiness_is_its_own,
    answers_are_hardened_and_metrics_need_the_scrape_token,
    undeclared_methods_are_405_with_allow,
    times_carry_their_offset,
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
