//! The supervisor console (监管台): Chinese pages for township supervisors and county offices,
//! rendered by the server itself. Nothing is fetched from the internet at run time (government
//! intranets have none): the templates, the stylesheet and the little JavaScript are compiled into
//! the binary, fonts are the browser's own, and maps are SVG drawn by the server ([`map`]).
//!
//! Pages: sign-in; 本周概览 (the week's overview of the supervisor's subtree); 网格 (a grid);
//! 巡查详情 (a patrol, with 通过 / 退回); 签收 (signing the week off); downloads of the record.
//! New patrols appear live through server-sent events (`/console/events`).
//!
//! Access follows the API's rules exactly (the same `Authed`): a page outside the user's subtree
//! is a 403 page, whatever the URL says.

mod events;
pub mod map;
mod pages;
mod review;
pub(crate) mod session;

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError, http::StatusCode, web};
use minijinja::Environment;

pub use session::ConsoleUser;

/// The templates, compiled into the binary; `.html` names are HTML-escaped by default.
static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.add_filter("local_time", local_time);
    for (name, source) in [
        (
            "base.html",
            include_str!("../../console/templates/base.html"),
        ),
        (
            "login.html",
            include_str!("../../console/templates/login.html"),
        ),
        (
            "error.html",
            include_str!("../../console/templates/error.html"),
        ),
        (
            "overview.html",
            include_str!("../../console/templates/overview.html"),
        ),
        (
            "grid.html",
            include_str!("../../console/templates/grid.html"),
        ),
        (
            "patrol.html",
            include_str!("../../console/templates/patrol.html"),
        ),
        (
            "signoff.html",
            include_str!("../../console/templates/signoff.html"),
        ),
    ] {
        if let Err(error) = env.add_template(name, source) {
            panic!("console template {name}: {error}");
        }
    }
    env
});

/// `{{ at | local_time(record.timezone) }}`: a UTC time as the API sends it
/// (`2026-11-23T04:25:21.088Z`, or without the offset as stored), shown in the jurisdiction's
/// zone to the minute. A value that does not read as such is shown as it is.
fn local_time(at: String, zone: String) -> String {
    use chrono::TimeZone;
    let (Ok(utc), Ok(tz)) = (crate::wire::utc::parse(&at), zone.parse::<chrono_tz::Tz>()) else {
        return at;
    };
    tz.from_utc_datetime(&utc)
        .format("%Y-%m-%d %H:%M")
        .to_string()
}

const STYLESHEET: &str = include_str!("../../console/static/console.css");
const SCRIPT: &str = include_str!("../../console/static/console.js");

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(|| async { redirect("/console/") }))
        .route(
            "/console",
            web::get().to(|| async { redirect("/console/") }),
        )
        .service(
            web::scope("/console")
                .route("/login", web::get().to(session::login_form))
                .route("/login", web::post().to(session::login))
                .route("/logout", web::post().to(session::logout))
                .route(
                    "/static/console.css",
                    web::get().to(|| async { asset(STYLESHEET, "text/css; charset=utf-8") }),
                )
                .route(
                    "/static/console.js",
                    web::get().to(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
                )
                .route("/", web::get().to(pages::overview))
                .route("/weeks/{week}", web::get().to(pages::overview_of_week))
                .route("/weeks/{week}/signoff", web::get().to(pages::signoff_form))
                .route("/weeks/{week}/signoff", web::post().to(pages::signoff))
                .route("/weeks/{week}/export", web::get().to(pages::export))
                .route("/grids/{code}", web::get().to(pages::grid))
                .route("/patrols/{id}", web::get().to(pages::patrol))
                .route("/patrols/{id}/review", web::post().to(review::review))
                .route("/photos/{sha}/{kind}", web::get().to(pages::photo))
                .route("/events", web::get().to(events::events))
                .default_service(web::to(|| async {
                    ConsoleError::NotFound.error_response()
                })),
        );
}

/// A static asset: cached for an hour (it changes only with the binary).
fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(body)
}

/// A rendered page. Pages are never cached: they show live figures and the user's own data.
pub(crate) fn page(status: u16, template: &str, context: minijinja::Value) -> HttpResponse {
    let rendered = TEMPLATES
        .get_template(template)
        .and_then(|t| t.render(context));
    match rendered {
        Ok(body) => HttpResponse::build(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        )
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("x-frame-options", "DENY"))
        .insert_header((
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             frame-ancestors 'none'; form-action 'self'",
        ))
        .body(body),
        Err(error) => {
            tracing::error!(%error, template, "console template failed");
            HttpResponse::InternalServerError()
                .content_type("text/html; charset=utf-8")
                .body("<!doctype html><meta charset=utf-8><p>页面生成失败，请联系管理员。</p>")
        }
    }
}

/// 303 See Other: after a form, the browser fetches the page with GET.
pub(crate) fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// What can go wrong on a console page, shown as a page in Chinese (never as JSON).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("sign in first")]
    SignIn { next: String },
    #[error("outside your part of the grid tree")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("the form's CSRF token is missing or wrong")]
    Csrf,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error")]
    Internal,
}

impl ConsoleError {
    /// The API's error, as a page: its status decides, its message explains.
    pub fn from_api(error: crate::error::ApiError) -> ConsoleError {
        match error.status_code().as_u16() {
            401 | 403 => ConsoleError::Forbidden,
            404 => ConsoleError::NotFound,
            409 => ConsoleError::Conflict(error.message),
            400 | 422 => ConsoleError::BadRequest(error.message),
            _ => {
                tracing::error!(error = %error.message, "console");
                ConsoleError::Internal
            }
        }
    }
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::SignIn { .. } => StatusCode::SEE_OTHER,
            ConsoleError::Forbidden | ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::NotFound => StatusCode::NOT_FOUND,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Conflict(_) => StatusCode::CONFLICT,
            ConsoleError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (title, message) = match self {
            ConsoleError::SignIn { next } => {
                let query = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
                return redirect(&format!("/console/login?{query}"));
            }
            ConsoleError::Forbidden => (
                "无权访问",
                "该页面不在您负责的网格范围内。如需查看，请联系上级管理员授权。".to_string(),
            ),
            ConsoleError::NotFound => ("未找到", "没有这个页面或记录。".to_string()),
            ConsoleError::Csrf => (
                "表单已失效",
                "表单校验失败（可能已过期或来自其他网站）。请返回刷新页面后重试。".to_string(),
            ),
            ConsoleError::BadRequest(m) => ("请求有误", m.clone()),
            ConsoleError::Conflict(m) => ("无法完成", m.clone()),
            ConsoleError::Internal => (
                "服务器错误",
                "服务器处理请求时出错，请稍后再试或联系管理员。".to_string(),
            ),
        };
        page(
            self.status_code().as_u16(),
            "error.html",
            minijinja::context! { title, message, status => self.status_code().as_u16() },
        )
    }
}

#[cfg(test)]
mod tests {
    /// Stored times are UTC; the pages show them in the jurisdiction's zone.
    #[test]
    fn times_are_shown_in_the_jurisdictions_zone() {
        assert_eq!(
            super::local_time("2026-11-23T21:25:21.088448".into(), "Asia/Shanghai".into()),
            "2026-11-24 05:25"
        );
        assert_eq!(
            super::local_time("2026-11-23T21:25:21".into(), "Asia/Shanghai".into()),
            "2026-11-24 05:25"
        );
        // As the record's times are serialized since issue 22 (RFC 3339 with the offset).
        assert_eq!(
            super::local_time("2026-11-23T21:25:21.088448Z".into(), "Asia/Shanghai".into()),
            "2026-11-24 05:25"
        );
        assert_eq!(
            super::local_time("2026-11-24T05:25:21+08:00".into(), "Asia/Shanghai".into()),
            "2026-11-24 05:25"
        );
        assert_eq!(
            super::local_time("soon".into(), "Asia/Shanghai".into()),
            "soon"
        );
    }
}
