//! Sign-in, tokens, refresh rotation with reuse detection, enrollment of phones, bad request bodies.

use chrono::{Duration, Utc};
use diesel::prelude::*;
use gridpatrol_server::auth::tokens::{AUDIENCE, Claims, ISSUER};
use gridpatrol_server::schema::{enrollment_codes, refresh_tokens};
use gridpatrol_tests::{Backend, JWT_SECRET, PASSWORD, TestApp, actor_id, both_backends};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

async fn sign_in_and_bad_credentials(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let pair = app.login("leader-522632100", PASSWORD).await;
    assert_eq!(pair["token_type"], "Bearer");
    assert_eq!(pair["expires_in"], 900);
    let token = pair["access_token"].as_str().expect("token");
    let me = app.get("/v1/me", Some(token)).await;
    let me = me.assert_ok();
    assert_eq!(me["username"], "leader-522632100");
    assert_eq!(me["roles"][0]["role"], "leader");
    assert_eq!(me["roles"][0]["grid_name"], "古州镇");

    let before = app.table_counts().await;
    app.post(
        "/v1/auth/login",
        None,
        &json!({"username": "leader-522632100", "password": "wrong password"}),
    )
    .await
    .assert_error(401, "invalid_credentials");
    app.post(
        "/v1/auth/login",
        None,
        &json!({"username": "nobody", "password": "wrong password"}),
    )
    .await
    .assert_error(401, "invalid_credentials");
    // An inspector has no password at all: same answer.
    app.post(
        "/v1/auth/login",
        None,
        &json!({"username": "inspector-522632100001-1", "password": ""}),
    )
    .await
    .assert_error(401, "invalid_credentials");
    assert_eq!(
        app.table_counts().await,
        before,
        "failed sign-ins create no session"
    );

    // Malformed bodies: each a 4xx with its own code.
    let url = format!("{}/v1/auth/login", app.base);
    let raw = |body: &'static str, content_type: &'static str| {
        app.client
            .post(url.clone())
            .header("content-type", content_type)
            .body(body)
    };
    app.send(raw("{\"username\": ", "application/json"))
        .await
        .assert_error(400, "malformed_json");
    app.send(raw(
        "{\"username\": 5, \"password\": \"x\"}",
        "application/json",
    ))
    .await
    .assert_error(422, "invalid_request");
    app.send(raw(
        "{\"username\": \"a\", \"password\": \"x\", \"admin\": true}",
        "application/json",
    ))
    .await
    .assert_error(422, "invalid_request");
    app.send(raw(
        "username=a&password=b",
        "application/x-www-form-urlencoded",
    ))
    .await
    .assert_error(415, "unsupported_media_type");
}

async fn repeated_failures_are_rate_limited(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let user = "deputy-522632100";
    for _ in 0..5 {
        app.post(
            "/v1/auth/login",
            None,
            &json!({"username": user, "password": "not the password"}),
        )
        .await
        .assert_error(401, "invalid_credentials");
    }
    // Locked now, even with the right password.
    let locked = app
        .post(
            "/v1/auth/login",
            None,
            &json!({"username": user, "password": PASSWORD}),
        )
        .await;
    locked.assert_error(429, "too_many_attempts");
    let retry: u64 = locked
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After header");
    assert!((1..=900).contains(&retry), "{retry}");
    // Other users are not affected.
    app.login("leader-522632100", PASSWORD).await;
}

fn forge(claims: serde_json::Value, secret: &str, kid: &str) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

async fn forged_expired_and_foreign_tokens_are_refused(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let pair = app.login("leader-522632100", PASSWORD).await;
    let good = pair["access_token"].as_str().expect("token").to_string();
    let kid = app.state.keys.current_kid().to_string();
    let header = jsonwebtoken::decode_header(&good).expect("header");
    assert_eq!(
        header.kid.as_deref(),
        Some(kid.as_str()),
        "tokens carry the key id"
    );
    let claims: Claims = {
        let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
        v.set_audience(&[AUDIENCE]);
        jsonwebtoken::decode(
            &good,
            &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
            &v,
        )
        .expect("decode")
        .claims
    };
    let now = Utc::now().timestamp();
    let base = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": claims.sub, "sid": claims.sid, "iat": now, "exp": now + 600});
    let with = |key: &str, value: serde_json::Value| {
        let mut c = base.clone();
        c[key] = value;
        c
    };
    // The genuine claims re-signed with our key work (the harness is sound) …
    app.get("/v1/me", Some(&forge(base.clone(), JWT_SECRET, &kid)))
        .await
        .assert_ok();
    // … and every deviation is refused.
    let cases = [
        (
            forge(base.clone(), "another-secret-of-at-least-32-bytes!!", &kid),
            "invalid_token",
        ),
        (
            forge(base.clone(), JWT_SECRET, "unknown-kid"),
            "invalid_token",
        ),
        (
            forge(with("aud", json!("someone-else")), JWT_SECRET, &kid),
            "invalid_token",
        ),
        (
            forge(with("iss", json!("evil")), JWT_SECRET, &kid),
            "invalid_token",
        ),
        (
            forge(with("exp", json!(now - 3600)), JWT_SECRET, &kid),
            "token_expired",
        ),
        (
            forge(
                json!({"iss": ISSUER, "aud": AUDIENCE, "sub": claims.sub, "sid": claims.sid}),
                JWT_SECRET,
                &kid,
            ),
            "invalid_token",
        ),
        (
            forge(with("sid", json!(987_654)), JWT_SECRET, &kid),
            "invalid_token",
        ),
        ("not-a-jwt".to_string(), "invalid_token"),
    ];
    for (token, code) in cases {
        app.get("/v1/me", Some(&token))
            .await
            .assert_error(401, code);
    }
    // Within the leeway an expiry a few seconds ago still passes.
    app.get(
        "/v1/me",
        Some(&forge(with("exp", json!(now - 5)), JWT_SECRET, &kid)),
    )
    .await
    .assert_ok();
    let no_scheme = app
        .send(
            app.client
                .get(format!("{}/v1/me", app.base))
                .header("authorization", good.clone()),
        )
        .await;
    no_scheme.assert_error(401, "invalid_token");
    assert!(no_scheme.headers.contains_key("www-authenticate"));
}

async fn refresh_rotates_and_a_reused_token_revokes_the_family(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let first = app.login("leader-522632100", PASSWORD).await;
    let r1 = first["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();

    let second = app
        .post("/v1/auth/refresh", None, &json!({"refresh_token": r1}))
        .await;
    let second = second.assert_ok().clone();
    let r2 = second["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    assert_ne!(r1, r2);
    app.get("/v1/me", second["access_token"].as_str())
        .await
        .assert_ok();

    // The response carrying r2 was "lost": the phone retries with r1 within the grace window.
    let retried = app
        .post("/v1/auth/refresh", None, &json!({"refresh_token": r1}))
        .await;
    let retried = retried.assert_ok().clone();
    let r3 = retried["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    // Exactly one live token remains in the family: r2 was spent by the retry.
    app.post("/v1/auth/refresh", None, &json!({"refresh_token": r2}))
        .await
        .assert_ok();

    // A token used long ago, presented again, is theft: the whole family is revoked.
    let aged = Utc::now().naive_utc() - Duration::minutes(10);
    app.with_conn(move |conn| {
        diesel::update(refresh_tokens::table.filter(refresh_tokens::used_at.is_not_null()))
            .set(refresh_tokens::used_at.eq(aged))
            .execute(conn)
    })
    .await;
    app.post("/v1/auth/refresh", None, &json!({"refresh_token": r1}))
        .await
        .assert_error(401, "refresh_token_reused");
    app.post("/v1/auth/refresh", None, &json!({"refresh_token": r3}))
        .await
        .assert_error(401, "session_revoked");
    app.get("/v1/me", retried["access_token"].as_str())
        .await
        .assert_error(401, "session_revoked");

    // Garbage and sign-out.
    app.post(
        "/v1/auth/refresh",
        None,
        &json!({"refresh_token": "gpr_nonsense"}),
    )
    .await
    .assert_error(401, "invalid_refresh_token");
    let fresh = app.login("leader-522632100", PASSWORD).await;
    let access = fresh["access_token"].as_str().expect("access");
    let logout = app.post("/v1/auth/logout", Some(access), &json!({})).await;
    assert_eq!(logout.status, 204, "{}", logout.text);
    app.get("/v1/me", Some(access))
        .await
        .assert_error(401, "session_revoked");
    app.post(
        "/v1/auth/refresh",
        None,
        &json!({"refresh_token": fresh["refresh_token"]}),
    )
    .await
    .assert_error(401, "session_revoked");
}

async fn enrollment_binds_an_actor_once(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let leader = app.token("leader-522632100").await;
    let inspector = app.user_id("inspector-522632100001-1").await;
    let code = app
        .post(
            &format!("/v1/users/{inspector}/enrollment-codes"),
            Some(&leader),
            &json!({}),
        )
        .await;
    assert_eq!(code.status, 201, "{}", code.text);
    let code = code.body["code"].as_str().expect("code").to_string();
    assert_eq!(code.len(), 14, "XXXX-XXXX-XXXX: {code}");

    let actor = actor_id();
    let before = app.table_counts().await;
    for (body, status, error) in [
        (
            json!({"code": code, "device_name": "红米", "actor_id": "not hex!"}),
            400,
            "invalid_actor_id",
        ),
        (
            json!({"code": code, "device_name": "", "actor_id": actor}),
            400,
            "invalid_device_name",
        ),
        (
            json!({"code": "AAAA-BBBB-CCCC", "device_name": "红米", "actor_id": actor}),
            400,
            "enrollment_code_invalid",
        ),
        (
            json!({"code": code, "device_name": "红米"}),
            422,
            "invalid_request",
        ),
    ] {
        app.post("/v1/devices/enroll", None, &body)
            .await
            .assert_error(status, error);
    }
    assert_eq!(
        app.table_counts().await,
        before,
        "refused enrollments change nothing"
    );

    // Dashes and case do not matter.
    let typed = code.replace('-', "").to_lowercase();
    let enrolled = app
        .post(
            "/v1/devices/enroll",
            None,
            &json!({"code": typed, "device_name": "红米 Note 12", "actor_id": actor}),
        )
        .await;
    let enrolled = enrolled.assert_ok().clone();
    let device_id = enrolled["device_id"].as_i64().expect("device id");
    let me = app.get("/v1/me", enrolled["access_token"].as_str()).await;
    assert_eq!(me.assert_ok()["device_id"], device_id);
    assert_eq!(me.body["roles"][0]["role"], "inspector");
    assert_eq!(me.body["roles"][0]["employment"], "full_time");

    let after = app.table_counts().await;
    app.post(
        "/v1/devices/enroll",
        None,
        &json!({"code": code, "device_name": "again", "actor_id": actor_id()}),
    )
    .await
    .assert_error(400, "enrollment_code_used");

    // A second code, but the actor id is already bound to the first phone.
    let second = app
        .post(
            &format!("/v1/users/{inspector}/enrollment-codes"),
            Some(&leader),
            &json!({}),
        )
        .await;
    let second = second.body["code"].as_str().expect("code").to_string();
    let after_second = app.table_counts().await;
    app.post(
        "/v1/devices/enroll",
        None,
        &json!({"code": second, "device_name": "x", "actor_id": actor}),
    )
    .await
    .assert_error(409, "actor_already_enrolled");
    // Expired codes are refused.
    let past = Utc::now().naive_utc() - Duration::hours(1);
    app.with_conn(move |conn| {
        diesel::update(enrollment_codes::table.filter(enrollment_codes::used_at.is_null()))
            .set(enrollment_codes::expires_at.eq(past))
            .execute(conn)
    })
    .await;
    app.post(
        "/v1/devices/enroll",
        None,
        &json!({"code": second, "device_name": "x", "actor_id": actor_id()}),
    )
    .await
    .assert_error(400, "enrollment_code_expired");
    assert_eq!(app.table_counts().await, after_second);
    assert_eq!(
        after[3].1,
        before[3].1 + 1,
        "exactly one device was enrolled"
    );
}

both_backends!(
    sign_in_and_bad_credentials,
    repeated_failures_are_rate_limited,
    forged_expired_and_foreign_tokens_are_refused,
    refresh_rotates_and_a_reused_token_revokes_the_family,
    enrollment_binds_an_actor_once,
);
