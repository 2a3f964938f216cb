//! The two calls the simulator and the corpus make as the county admin, over HTTP: signing in,
//! and a one-time enrollment code for a phone.

/// Signs `username` in at `base`; returns the access token.
pub async fn sign_in(
    http: &reqwest::Client,
    base: &str,
    username: &str,
    password: &str,
) -> Result<String, String> {
    let response = http
        .post(format!("{base}/v1/auth/login"))
        .json(&serde_json::json!({"username": username, "password": password}))
        .send()
        .await
        .map_err(|e| format!("cannot reach {base}: {e}"))?;
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    body["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("sign-in as {username} failed: {body}"))
}

/// A one-time enrollment code for the person `user_id`, made with the manager's `token`.
pub async fn enrollment_code(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    user_id: i64,
) -> Result<String, String> {
    let response = http
        .post(format!("{base}/v1/users/{user_id}/enrollment-codes"))
        .bearer_auth(token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    body["code"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no enrollment code for user {user_id}: {body}"))
}
