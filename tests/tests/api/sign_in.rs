//! Sign-in limits (issue 22, findings 3, 4 and 6): per client address, per account and address,
//! account-wide; password checks bounded; slow bodies cut off; sign-ins in the audit log.
//!
//! Clients at other addresses are real sockets bound to other loopback addresses (127.0.0.0/8
//! is all local on Linux), so the server sees each as its own peer.

use std::net::IpAddr;

use futures_util::future::join_all;
use gridpatrol_server::ServeConfig;
use gridpatrol_tests::{Backend, PASSWORD, Resp, TestApp, both_backends, serve_config};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client whose connections come from `ip`.
fn from(ip: &str) -> reqwest::Client {
    let _ = gridpatrol_tests::http_client();
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().expect("ip"))
        .build()
        .expect("client")
}

async fn login_from(
    app: &TestApp,
    client: &reqwest::Client,
    username: &str,
    password: &str,
) -> Resp {
    app.send(
        client
            .post(format!("{}/v1/auth/login", app.base))
            .json(&json!({"username": username, "password": password})),
    )
    .await
}

#[track_caller]
fn assert_refused(resp: &Resp, scope: &str) {
    resp.assert_error(429, "too_many_attempts");
    assert_eq!(resp.body["details"]["scope"], scope, "{}", resp.text);
    let retry: u64 = resp
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=900).contains(&retry), "{retry}");
}

async fn throttle_rows(app: &TestApp) -> Vec<(i64, String, i32)> {
    app.with_conn(|conn| {
        use diesel::prelude::*;
        use gridpatrol_server::schema::sign_in_throttle as t;
        t::table
            .order((t::user_id, t::client))
            .select((t::user_id, t::client, t::failures))
            .load(conn)
    })
    .await
}

async fn a_stranger_cannot_lock_the_owner_out(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let leader = "leader-522632100";
    let stranger = from("127.0.0.2");
    for _ in 0..5 {
        login_from(&app, &stranger, leader, "not the password")
            .await
            .assert_error(401, "invalid_credentials");
    }
    // The stranger's address is locked out of the account, even with the right password.
    assert_refused(
        &login_from(&app, &stranger, leader, PASSWORD).await,
        "account",
    );
    // The owner, at its own address, is not.
    let owner = from("127.0.0.1");
    login_from(&app, &owner, leader, PASSWORD).await.assert_ok();
    // Names that are no account are refused alike and leave no row.
    for i in 0..3 {
        login_from(&app, &stranger, &format!("nobody-{i}"), "guess")
            .await
            .assert_error(401, "invalid_credentials");
    }
    let leader_id = app.user_id(leader).await;
    assert_eq!(
        throttle_rows(&app).await,
        vec![
            (leader_id, "127.0.0.1".to_string(), 0),
            (leader_id, "127.0.0.2".to_string(), 6),
        ],
        "one row per (account, address); the first refusal marks the window (limit + 1)"
    );

    // The audit log has each with its client's address.
    let admin = app.token("admin-522632").await;
    let events = |kind: &'static str| {
        let (app, admin) = (&app, admin.clone());
        async move {
            let resp = app
                .get(&format!("/v1/security-events?kind={kind}"), Some(&admin))
                .await;
            let rows = resp.assert_ok().as_array().expect("events").clone();
            rows.into_iter()
                .filter(|e| e["target_user_id"] == leader_id)
                .map(|e| {
                    (
                        e["client"].as_str().unwrap_or("").to_string(),
                        e["detail"].clone(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let failed = events("sign_in_failed").await;
    assert_eq!(failed.len(), 5, "{failed:?}");
    assert!(
        failed.iter().all(|(client, _)| client == "127.0.0.2"),
        "{failed:?}"
    );
    let locked = events("sign_in_locked").await;
    assert_eq!(locked.len(), 1, "{locked:?}");
    assert_eq!(locked[0].0, "127.0.0.2");
    assert_eq!(locked[0].1["scope"], "account");
    let signed_in = events("signed_in").await;
    assert_eq!(signed_in.len(), 1, "{signed_in:?}");
    assert_eq!(signed_in[0].0, "127.0.0.1");
}

/// 40 guesses at once at one account from one address: exactly the limit are checked.
async fn parallel_guesses_are_counted_once_each(backend: Backend) {
    let serve = ServeConfig {
        signin_per_client_per_minute: 1_000,
        password_queue_ms: 120_000,
        ..serve_config()
    };
    let app = TestApp::with_demo_serving(backend, serve).await;
    let checks = app.state.sign_in.checks();
    let client = from("127.0.0.3");
    let answers = join_all(
        (0..40).map(|_| login_from(&app, &client, "deputy-522632100", "not the password")),
    )
    .await;
    let status = |code: u16| answers.iter().filter(|r| r.status == code).count();
    assert_eq!((status(401), status(429)), (5, 35), "{answers:?}");
    for refused in answers.iter().filter(|r| r.status == 429) {
        assert_refused(refused, "account");
    }
    assert_eq!(
        app.state.sign_in.checks() - checks,
        5,
        "refused guesses run no password check"
    );
}

/// Bad sign-ins hammered from one address: past its bucket they get 429 without a password
/// check, the password checks take turns, and other routes and other clients are served.
async fn hammered_sign_ins_leave_other_routes_answering(backend: Backend) {
    let serve = ServeConfig {
        signin_per_client_per_minute: 10,
        password_concurrency: Some(1),
        ..serve_config()
    };
    let app = TestApp::with_demo_serving(backend, serve).await;
    let token = app.token("leader-522632100").await;
    let checks = app.state.sign_in.checks();
    let attacker = from("127.0.0.4");
    let names: Vec<String> = (0..40).map(|i| format!("guess-{i}")).collect();
    let guesses = join_all(
        names
            .iter()
            .map(|name| login_from(&app, &attacker, name, "password")),
    );
    let others = async {
        let me = app.get("/v1/me", Some(&token)).await;
        let health = app.get("/healthz", None).await;
        (me, health)
    };
    let (answers, (me, health)) = tokio::join!(guesses, others);
    me.assert_ok();
    health.assert_ok();
    let status = |code: u16| answers.iter().filter(|r| r.status == code).count();
    // 10 in the bucket (one more if the burst took over the 6 s a token takes to come back).
    assert!((29..=30).contains(&status(429)), "{answers:?}");
    assert_eq!(status(401) + status(503) + status(429), 40, "{answers:?}");
    for busy in answers.iter().filter(|r| r.status == 503) {
        busy.assert_error(503, "server_busy");
    }
    for refused in answers.iter().filter(|r| r.status == 429) {
        assert_refused(refused, "client");
    }
    assert_eq!(
        app.state.sign_in.checks() - checks,
        status(401) as u64,
        "only the guesses within the bucket were checked"
    );
    // Another address has its own bucket.
    app.login("deputy-522632100", PASSWORD).await;
}

async fn past_the_account_wide_limit_only_the_owners_addresses_may_try(backend: Backend) {
    let serve = ServeConfig {
        signin_max_failures: 3,
        signin_account_max_failures: 6,
        ..serve_config()
    };
    let app = TestApp::with_demo_serving(backend, serve).await;
    let leader = "leader-522632100";
    let owner = from("127.0.0.5");
    login_from(&app, &owner, leader, PASSWORD).await.assert_ok();
    for stranger in ["127.0.0.6", "127.0.0.7"] {
        let stranger = from(stranger);
        for _ in 0..3 {
            login_from(&app, &stranger, leader, "guess")
                .await
                .assert_error(401, "invalid_credentials");
        }
    }
    let newcomer = from("127.0.0.8");
    assert_refused(
        &login_from(&app, &newcomer, leader, PASSWORD).await,
        "account_wide",
    );
    // The owner's address keeps working.
    login_from(&app, &owner, leader, PASSWORD).await.assert_ok();
}

both_backends!(
    a_stranger_cannot_lock_the_owner_out,
    parallel_guesses_are_counted_once_each,
    hammered_sign_ins_leave_other_routes_answering,
    past_the_account_wide_limit_only_the_owners_addresses_may_try
);

/// A body sent a byte at a time is cut off with 408 instead of holding the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_a_byte_at_a_time_is_cut_off() {
    let serve = ServeConfig {
        body_timeout_secs: 1,
        ..serve_config()
    };
    let app = TestApp::start(gridpatrol_tests::fresh_database(Backend::Sqlite), serve).await;
    let address = app.base.trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let (mut read, mut write) = tcp.into_split();
    write
        .write_all(
            b"POST /v1/auth/login HTTP/1.1\r\nHost: gridpatrol\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{",
        )
        .await
        .expect("head");
    // A byte every 300 ms, 60 of them: never the whole body.
    let trickle = tokio::spawn(async move {
        for _ in 0..60 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            if write.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(15),
        read.read_to_end(&mut answer),
    )
    .await
    .expect("the server answers a trickle instead of waiting for it")
    .expect("read");
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    // An ordinary request is unaffected.
    app.get("/healthz", None).await.assert_ok();
}
