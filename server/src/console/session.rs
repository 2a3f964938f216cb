//! Signing in to the console: a password form, then a random token in an HttpOnly, SameSite=Strict
//! cookie. The server keeps only the token's hash, tied to an account session (`sessions`), so
//! that ending the session, disabling the user or revoking from the API ends the console's too.
//! Every form carries the session's CSRF token; the sign-in form, before there is a session,
//! carries one that must match a short-lived cookie of its own (double submit).

use std::future::Future;
use std::pin::Pin;

use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use base64::Engine;
use diesel::prelude::*;
use serde::Deserialize;

use super::{ConsoleError, page, redirect};
use crate::app::AppState;
use crate::auth::tokens::{random_bytes, sha256_hex};
use crate::auth::{Authed, credentials, load};
use crate::db::now;
use crate::error::ApiError;
use crate::schema::{console_sessions, sessions, users};

pub const SESSION_COOKIE: &str = "gp_console";
const LOGIN_COOKIE: &str = "gp_login";
/// A console sign-in lasts a working day.
const SESSION_HOURS: i64 = 12;

fn new_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// Constant-time comparison of two tokens.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie<'a>(
    req: &HttpRequest,
    name: &'a str,
    value: String,
    max_age: CookieDuration,
) -> Cookie<'a> {
    Cookie::build(name, value)
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(came_over_https(req))
        .max_age(max_age)
        .finish()
}

/// Whether the browser reached us over HTTPS: this server's own TLS, or a trusted reverse
/// proxy's word for it (`X-Forwarded-Proto`, `Forwarded`). A client's own claim is not
/// believed: anyone can send the header.
fn came_over_https(req: &HttpRequest) -> bool {
    if crate::app::from_trusted_proxy(req).is_some() {
        req.connection_info().scheme() == "https"
    } else {
        req.app_config().secure()
    }
}

/// The signed-in user of a console request, with the CSRF token its forms must carry.
pub struct ConsoleUser {
    pub authed: Authed,
    pub name: String,
    pub username: String,
    pub csrf: String,
}

impl ConsoleUser {
    /// Checks a form's CSRF token.
    pub fn check_csrf(&self, sent: &str) -> Result<(), ConsoleError> {
        if same(sent, &self.csrf) {
            Ok(())
        } else {
            Err(ConsoleError::Csrf)
        }
    }
}

impl FromRequest for ConsoleUser {
    type Error = ConsoleError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = req.cookie(SESSION_COOKIE).map(|c| c.value().to_string());
        let next = req
            .uri()
            .path_and_query()
            .map_or("/console/".to_string(), |p| p.to_string());
        Box::pin(async move {
            let state = state.ok_or(ConsoleError::Internal)?;
            let Some(token) = token else {
                return Err(ConsoleError::SignIn { next });
            };
            let hash = sha256_hex(&token);
            let found = state
                .db
                .run(move |conn| -> Result<_, ApiError> {
                    let row: Option<(i64, i64, String)> = console_sessions::table
                        .inner_join(
                            sessions::table.on(sessions::id.eq(console_sessions::session_id)),
                        )
                        .filter(console_sessions::token_hash.eq(&hash))
                        .filter(console_sessions::expires_at.gt(now()))
                        .select((sessions::id, sessions::user_id, console_sessions::csrf))
                        .first(conn)
                        .optional()?;
                    let Some((session_id, user_id, csrf)) = row else {
                        return Ok(None);
                    };
                    let Ok(authed) = load(conn, user_id, session_id, None) else {
                        return Ok(None);
                    };
                    let (name, username): (String, String) = users::table
                        .find(user_id)
                        .select((users::display_name, users::username))
                        .first(conn)?;
                    Ok(Some(ConsoleUser {
                        authed,
                        name,
                        username,
                        csrf,
                    }))
                })
                .await
                .map_err(|_| ConsoleError::Internal)?;
            found.ok_or(ConsoleError::SignIn { next })
        })
    }
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// Only a path inside the console: never an address elsewhere (an open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/console/") && !n.starts_with("//") && !n.contains('\\') => {
            n.to_string()
        }
        _ => "/console/".to_string(),
    }
}

fn login_page(req: &HttpRequest, next: &str, error: Option<&str>, username: &str) -> HttpResponse {
    let csrf = new_token();
    let mut response = page(
        if error.is_some() { 401 } else { 200 },
        "login.html",
        minijinja::context! { next, error, username, csrf => &csrf },
    );
    let _ = response.add_cookie(&cookie(req, LOGIN_COOKIE, csrf, CookieDuration::hours(1)));
    response
}

/// GET /console/login
pub async fn login_form(req: HttpRequest, query: web::Query<NextQuery>) -> HttpResponse {
    login_page(&req, &safe_next(query.next.as_deref()), None, "")
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    csrf: String,
    next: Option<String>,
}

/// POST /console/login
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, ConsoleError> {
    let LoginForm {
        username,
        password,
        csrf,
        next,
    } = form.into_inner();
    let next = safe_next(next.as_deref());
    let expected = req.cookie(LOGIN_COOKIE).map(|c| c.value().to_string());
    if !expected.is_some_and(|e| same(&e, &csrf)) {
        return Err(ConsoleError::Csrf);
    }
    let username = username.trim().to_string();
    let token = new_token();
    let token_hash = sha256_hex(&token);
    let signed_in = credentials::sign_in(
        &state,
        crate::auth::throttle::Client::of(&req),
        username.clone(),
        password,
        move |conn, user_id| -> Result<(), ApiError> {
            let session_id: i64 = diesel::insert_into(sessions::table)
                .values((
                    sessions::user_id.eq(user_id),
                    sessions::device_id.eq(None::<i64>),
                    sessions::created_at.eq(now()),
                ))
                .returning(sessions::id)
                .get_result(conn)?;
            diesel::insert_into(console_sessions::table)
                .values((
                    console_sessions::token_hash.eq(&token_hash),
                    console_sessions::session_id.eq(session_id),
                    console_sessions::csrf.eq(new_token()),
                    console_sessions::created_at.eq(now()),
                    console_sessions::expires_at.eq(now() + chrono::Duration::hours(SESSION_HOURS)),
                ))
                .execute(conn)?;
            Ok(())
        },
    )
    .await;
    let signed_in = match signed_in {
        Ok(signed_in) => signed_in.is_some(),
        Err(error) if error.code == "too_many_attempts" || error.code == "server_busy" => {
            let message = format!("登录失败次数过多，请稍后再试（{}）", error.message);
            return Ok(login_page(&req, &next, Some(&message), &username));
        }
        Err(_) => return Err(ConsoleError::Internal),
    };
    if !signed_in {
        return Ok(login_page(&req, &next, Some("用户名或密码错误"), &username));
    }
    let mut response = redirect(&next);
    let _ = response.add_cookie(&cookie(
        &req,
        SESSION_COOKIE,
        token,
        CookieDuration::hours(SESSION_HOURS),
    ));
    let _ = response.add_removal_cookie(&cookie(
        &req,
        LOGIN_COOKIE,
        String::new(),
        CookieDuration::ZERO,
    ));
    Ok(response)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

/// POST /console/logout: ends the session (the account session too).
pub async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    user: ConsoleUser,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    user.check_csrf(&form.csrf)?;
    let session_id = user.authed.session_id;
    state
        .db
        .write(move |conn| -> Result<(), ApiError> {
            diesel::delete(
                console_sessions::table.filter(console_sessions::session_id.eq(session_id)),
            )
            .execute(conn)?;
            crate::auth::tokens::revoke_session(conn, session_id, "signed out of the console")?;
            Ok(())
        })
        .await
        .map_err(|_| ConsoleError::Internal)?;
    let mut response = redirect("/console/login");
    let _ = response.add_removal_cookie(&cookie(
        &req,
        SESSION_COOKIE,
        String::new(),
        CookieDuration::ZERO,
    ));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After signing in, the browser goes only to a console page: never to another site
    /// (`//evil.example`, `https://…`, a backslash some browsers read as a slash).
    #[test]
    fn next_never_leaves_the_console() {
        assert_eq!(
            safe_next(Some("/console/grids/522632001001?week=2026-W47")),
            "/console/grids/522632001001?week=2026-W47"
        );
        for bad in [
            "https://evil.example/console/",
            "//evil.example/console/",
            "/console/\\\\evil.example",
            "/v1/grids",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/console/", "{bad}");
        }
        assert_eq!(safe_next(None), "/console/");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
