//! The supervisor console's session as a browser holds it: cookies, CSRF tokens, the live event
//! stream. (Its pages are tested in a real browser by `tests/console/test_console.py`.)

use gridpatrol_tests::{Backend, PASSWORD, TestApp, both_backends};

/// A browser's cookie jar for one origin, by hand (the workspace's reqwest has no cookie store).
struct Browser<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
    cookies: std::collections::BTreeMap<String, String>,
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Browser {
            app,
            client,
            cookies: Default::default(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all("set-cookie") {
            let value = value.to_str().expect("cookie");
            let pair = value.split(';').next().expect("pair");
            if let Some((name, value)) = pair.split_once('=') {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
    }

    async fn get(&mut self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.app.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .expect("get");
        self.keep(&response);
        let status = response.status().as_u16();
        (status, response.text().await.expect("text"))
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> u16 {
        let response = self
            .client
            .post(format!("{}{path}", self.app.base))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(urlencoded(form))
            .send()
            .await
            .expect("post");
        self.keep(&response);
        response.status().as_u16()
    }

    /// Signs in through the login form; returns the CSRF token the signed-in pages carry.
    async fn sign_in(&mut self, username: &str) -> String {
        let (status, page) = self.get("/console/login").await;
        assert_eq!(status, 200);
        let csrf = csrf_of(&page);
        let status = self
            .post(
                "/console/login",
                &[
                    ("username", username),
                    ("password", PASSWORD),
                    ("csrf", &csrf),
                    ("next", "/console/"),
                ],
            )
            .await;
        assert_eq!(status, 303, "signed in");
        let (status, page) = self.get("/console/").await;
        assert_eq!(status, 200, "{page}");
        csrf_of(&page)
    }
}

/// A form body, `application/x-www-form-urlencoded`.
fn urlencoded(form: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    form.iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn csrf_of(page: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let at = page.find(marker).expect("a CSRF field") + marker.len();
    page[at..].split('"').next().expect("its value").to_string()
}

/// Issue 22, finding 6: `/console/events` kept streaming after sign-out. The stream checks the
/// session at every poll: signed out in another tab, it says `signed-out` and ends.
async fn the_live_stream_ends_with_the_session(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let mut browser = Browser::new(&app);
    let csrf = browser.sign_in("leader-522632100").await;
    let stream = browser
        .client
        .get(format!("{}/console/events?after=0", app.base))
        .header("cookie", browser.cookie_header())
        .send()
        .await
        .expect("events");
    assert_eq!(stream.status(), 200);
    let reader = tokio::spawn(async move {
        let mut stream = stream;
        let mut seen = String::new();
        while let Some(chunk) = stream.chunk().await.expect("chunk") {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        seen
    });
    // Streaming while signed in: a poll or two go by.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(!reader.is_finished(), "the stream runs while signed in");
    assert_eq!(
        browser.post("/console/logout", &[("csrf", &csrf)]).await,
        303
    );
    let seen = tokio::time::timeout(std::time::Duration::from_secs(15), reader)
        .await
        .expect("the stream ends soon after sign-out")
        .expect("reader");
    assert!(seen.contains("event: signed-out"), "{seen}");
    assert!(seen.contains(": ping"), "it streamed before: {seen}");
    // And the console no longer serves the old cookie.
    let (status, _) = browser.get("/console/").await;
    assert_eq!(status, 303, "back to the sign-in page");
}

both_backends!(the_live_stream_ends_with_the_session);
