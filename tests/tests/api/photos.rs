//! Photo uploads against the real server: tus 1.0 over real HTTP, pieces in the real object store
//! (a local directory), metadata in SQLite and PostgreSQL.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use diesel::prelude::*;
use futures_util::StreamExt;
use gridpatrol_server::schema::{photo_uploads, photos};
use gridpatrol_tests::phone::Phone;
use gridpatrol_tests::{Backend, TestApp, both_backends, s3_serve_config, serve_config};
use object_store::ObjectStoreExt;
use serde_json::Value;
use sha2::{Digest, Sha256};

const INSPECTOR: &str = "inspector-522632100001-1";
const OTHER_INSPECTOR: &str = "inspector-522632100002-1";
const LEADER: &str = "leader-522632100";

pub use gridpatrol_tests::noise_jpeg as jpeg;
pub use gridpatrol_tests::sha256_hex as sha256;

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn offset(&self) -> i64 {
        self.header("upload-offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Upload-Offset: {} {:?}", self.status, self.body))
    }
    pub fn location(&self) -> String {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location: {} {:?}", self.status, self.body))
            .to_string()
    }
}

/// A device speaking tus to the test server.
pub struct Tus<'a> {
    pub app: &'a TestApp,
    pub token: String,
}

impl Tus<'_> {
    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    pub async fn create_with(&self, length: usize, metadata: &[(&str, &str)]) -> Reply {
        let metadata: Vec<String> = metadata
            .iter()
            .map(|(k, v)| format!("{k} {}", STANDARD.encode(v)))
            .collect();
        self.send(
            self.app
                .client
                .post(format!("{}/v1/photos/uploads", self.app.base))
                .header("tus-resumable", "1.0.0")
                .header("upload-length", length.to_string())
                .header("upload-metadata", metadata.join(",")),
        )
        .await
    }

    pub async fn create(&self, photo: &[u8]) -> Reply {
        self.create_with(
            photo.len(),
            &[("sha256", &sha256(photo)), ("filetype", "image/jpeg")],
        )
        .await
    }

    pub async fn head(&self, location: &str) -> Reply {
        self.send(
            self.app
                .client
                .head(format!("{}{location}", self.app.base))
                .header("tus-resumable", "1.0.0"),
        )
        .await
    }

    pub async fn patch_with(
        &self,
        location: &str,
        offset: usize,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .app
            .client
            .patch(format!("{}{location}", self.app.base))
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", offset.to_string())
            .body(body.to_vec());
        if !extra.iter().any(|(name, _)| *name == "content-type") {
            request = request.header("content-type", "application/offset+octet-stream");
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    pub async fn patch(&self, location: &str, offset: usize, body: &[u8]) -> Reply {
        self.patch_with(location, offset, body, &[]).await
    }

    /// Uploads a whole photo in pieces of `piece` bytes; returns the final reply.
    pub async fn upload(&self, photo: &[u8], piece: usize) -> Reply {
        let created = self.create(photo).await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        let location = created.location();
        let mut offset = created.offset() as usize;
        let mut last = created;
        while offset < photo.len() {
            let end = (offset + piece).min(photo.len());
            last = self.patch(&location, offset, &photo[offset..end]).await;
            assert_eq!(last.status, 204, "{:?}", last.body);
            offset = last.offset() as usize;
        }
        last
    }
}

pub async fn device<'a>(app: &'a TestApp, username: &str) -> Tus<'a> {
    let leader = app.token(LEADER).await;
    let phone = Phone::enroll(app, &leader, username).await;
    Tus {
        app,
        token: phone.token,
    }
}

/// Objects in the photo store under `prefix`.
pub async fn objects(app: &TestApp, prefix: &str) -> Vec<String> {
    let mut listing = app
        .state
        .photos
        .store
        .list(Some(&object_store::path::Path::from(prefix)));
    let mut found = Vec::new();
    while let Some(meta) = listing.next().await {
        found.push(meta.expect("listing").location.to_string());
    }
    found.sort();
    found
}

/// Where a test's metadata and photo bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Sqlite,
    Postgres,
    /// PostgreSQL metadata, bytes in an S3-compatible bucket.
    S3,
}

async fn app(setup: Setup) -> TestApp {
    match setup {
        Setup::Sqlite => TestApp::with_demo_serving(Backend::Sqlite, serve_config()).await,
        Setup::Postgres => TestApp::with_demo_serving(Backend::Postgres, serve_config()).await,
        Setup::S3 => TestApp::with_demo_serving(Backend::Postgres, s3_serve_config().await).await,
    }
}

/// Runs a test on SQLite and PostgreSQL with a local photo directory, and on PostgreSQL with
/// an S3-compatible store.
macro_rules! every_store {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Setup::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Setup::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3() {
                super::$name(super::Setup::S3).await
            }
        }
    )+};
}

/// Waits until the background worker has made a photo's derived images and hash.
pub async fn wait_derived(app: &TestApp, sha: &str, token: &str) {
    let mut derived = String::new();
    for _ in 0..400 {
        let info = app
            .get(&format!("/v1/photos/{sha}/info"), Some(token))
            .await;
        derived = info.body["derived"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if derived != "pending" && derived != "working" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(derived, "done", "{sha}");
}

async fn stored_photos(app: &TestApp) -> i64 {
    app.with_conn(|conn| photos::table.count().get_result(conn))
        .await
}

async fn a_photo_arrives_in_pieces_and_is_stored_once(setup: Setup) {
    let app = app(setup).await;
    let phone = device(&app, INSPECTOR).await;
    let photo = jpeg(1, 400, 300);
    let sha = sha256(&photo);

    let created = phone.create(&photo).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.header("tus-resumable"), Some("1.0.0"));
    assert_eq!(created.offset(), 0);
    assert!(created.header("upload-expires").is_some());
    let location = created.location();
    let id = location.rsplit('/').next().expect("upload id");
    assert_eq!(location, format!("/v1/photos/uploads/{id}"));
    // Asking again (a phone killed before it stored the address) finds the same upload.
    assert_eq!(phone.create(&photo).await.location(), location);

    let half = photo.len() / 2;
    let first = phone.patch(&location, 0, &photo[..half]).await;
    assert_eq!((first.status, first.offset()), (204, half as i64));
    let status = phone.head(&location).await;
    assert_eq!((status.status, status.offset()), (200, half as i64));
    assert_eq!(
        status.header("upload-length"),
        Some(photo.len().to_string().as_str())
    );
    assert_eq!(status.header("cache-control"), Some("no-store"));
    let last = phone.patch(&location, half, &photo[half..]).await;
    assert_eq!(
        (last.status, last.offset()),
        (204, photo.len() as i64),
        "{:?}",
        last.body
    );

    assert_eq!(stored_photos(&app).await, 1);
    assert_eq!(
        objects(&app, "originals").await,
        vec![format!("originals/{sha}")]
    );
    assert!(
        objects(&app, "uploads").await.is_empty(),
        "pieces are deleted once whole"
    );
    let kept = app
        .state
        .photos
        .store
        .get(&object_store::path::Path::from(format!("originals/{sha}")))
        .await
        .expect("original")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(sha256(&kept), sha);

    // The same inspector's other phone with the same photo: finished at once, nothing sent,
    // stored once.
    let second_phone = device(&app, INSPECTOR).await;
    let again = second_phone.create(&photo).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.offset(), photo.len() as i64);
    assert_eq!(
        second_phone.head(&again.location()).await.offset(),
        photo.len() as i64
    );
    assert_eq!(stored_photos(&app).await, 1);

    // Anybody else learns nothing from a hash (issue 22, finding 6: a 409 named the length of
    // another township's photo): a wrong length is an upload like any other, which no bytes
    // will ever complete, and the right one must send the photo to have it.
    let guesser = device(&app, "inspector-522632100003-1").await;
    let guessed = guesser
        .create_with(
            photo.len() + 1,
            &[("sha256", &sha), ("filetype", "image/jpeg")],
        )
        .await;
    assert_eq!((guessed.status, guessed.offset()), (201, 0));
    let other = device(&app, OTHER_INSPECTOR).await;
    let holding = other.create(&photo).await;
    assert_eq!((holding.status, holding.offset()), (201, 0));
    let sent = other.patch(&holding.location(), 0, &photo).await;
    assert_eq!((sent.status, sent.offset()), (204, photo.len() as i64));
    assert_eq!(stored_photos(&app).await, 1);

    // The uploader sees what the server read from it.
    let info = app
        .get(&format!("/v1/photos/{sha}/info"), Some(&phone.token))
        .await;
    assert_eq!(info.status, 200, "{}", info.text);
    assert_eq!(info.body["width"], 400);
    assert_eq!(info.body["height"], 300);
    assert_eq!(info.body["format"], "jpg");
}

/// A photo bigger than one multipart part (5 MiB) sent in one piece: written in parts, bounded
/// memory, one object.
async fn a_photo_bigger_than_a_part_goes_in_one_piece(setup: Setup) {
    let app = app(setup).await;
    let phone = device(&app, INSPECTOR).await;
    let photo = jpeg(9, 2600, 2000);
    assert!(photo.len() > 5 * 1024 * 1024 + 1, "{} bytes", photo.len());
    let done = phone.upload(&photo, photo.len()).await;
    assert_eq!(done.offset(), photo.len() as i64);
    let kept = app
        .state
        .photos
        .store
        .get(&object_store::path::Path::from(format!(
            "originals/{}",
            sha256(&photo)
        )))
        .await
        .expect("original")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(kept.len(), photo.len());
    assert!(objects(&app, "uploads").await.is_empty());
}

async fn two_devices_uploading_the_same_photo_at_once_store_it_once(setup: Setup) {
    let app = app(setup).await;
    let (a, b) = (
        device(&app, INSPECTOR).await,
        device(&app, OTHER_INSPECTOR).await,
    );
    let photo = jpeg(2, 640, 480);
    let (ra, rb) = tokio::join!(a.upload(&photo, 7_000), b.upload(&photo, 5_000));
    assert_eq!(ra.offset(), photo.len() as i64);
    assert_eq!(rb.offset(), photo.len() as i64);
    assert_eq!(stored_photos(&app).await, 1);
    assert_eq!(objects(&app, "originals").await.len(), 1);
    assert!(objects(&app, "uploads").await.is_empty());
}

/// Every refusal: its status and code, and nothing kept.
async fn bad_uploads_get_their_own_codes_and_store_nothing(setup: Setup) {
    let app = app(setup).await;
    let phone = device(&app, INSPECTOR).await;
    let photo = jpeg(3, 320, 240);
    let sha = sha256(&photo);
    let len = photo.len();

    // Creation.
    let no_tus = app
        .client
        .post(format!("{}/v1/photos/uploads", app.base))
        .bearer_auth(&phone.token)
        .header("upload-length", "10")
        .send()
        .await
        .expect("request");
    assert_eq!(no_tus.status().as_u16(), 412);
    assert_eq!(no_tus.headers()["tus-version"], "1.0.0");
    let cases: Vec<(Reply, u16, &str)> = vec![
        (
            phone.create_with(len, &[("filetype", "image/jpeg")]).await,
            400,
            "photo_hash_required",
        ),
        (
            phone.create_with(len, &[("sha256", "abc")]).await,
            400,
            "photo_hash_required",
        ),
        (
            phone.create_with(0, &[("sha256", &sha)]).await,
            400,
            "photo_empty",
        ),
        (
            phone
                .create_with(21 * 1024 * 1024, &[("sha256", &sha)])
                .await,
            413,
            "photo_too_large",
        ),
        (
            phone
                .create_with(len, &[("sha256", sha.as_str()), ("filetype", "image/heic")])
                .await,
            415,
            "photo_unsupported_format",
        ),
    ];
    for (reply, status, code) in &cases {
        assert_eq!(
            (reply.status, reply.code()),
            (*status, *code),
            "{:?}",
            reply.body
        );
        assert_eq!(reply.header("tus-resumable"), Some("1.0.0"));
    }
    // A supervisor's browser session has no device.
    let leader = Tus {
        app: &app,
        token: app.token(LEADER).await,
    };
    let reply = leader.create(&photo).await;
    assert_eq!((reply.status, reply.code()), (403, "device_required"));

    // Pieces.
    let location = phone.create(&photo).await.location();
    let first = phone.patch(&location, 0, &photo[..1000]).await;
    assert_eq!(first.status, 204);
    let forged = phone.patch(&location, 5000, &photo[5000..6000]).await;
    assert_eq!((forged.status, forged.code()), (409, "offset_mismatch"));
    assert_eq!(
        forged.offset(),
        1000,
        "the answer says where the upload stands"
    );
    let past = phone.patch(&location, 1000, &[0u8; 1].repeat(len)).await;
    assert_eq!((past.status, past.code()), (413, "upload_past_length"));
    let wrong_sum = phone
        .patch_with(
            &location,
            1000,
            &photo[1000..2000],
            &[(
                "upload-checksum",
                &format!("sha256 {}", STANDARD.encode([0u8; 32])),
            )],
        )
        .await;
    assert_eq!(
        (wrong_sum.status, wrong_sum.code()),
        (460, "checksum_mismatch")
    );
    let right_sum = phone
        .patch_with(
            &location,
            1000,
            &photo[1000..2000],
            &[(
                "upload-checksum",
                &format!(
                    "sha256 {}",
                    STANDARD.encode(Sha256::digest(&photo[1000..2000]))
                ),
            )],
        )
        .await;
    assert_eq!((right_sum.status, right_sum.offset()), (204, 2000));
    let other = device(&app, OTHER_INSPECTOR).await;
    let stranger = other.patch(&location, 2000, &photo[2000..3000]).await;
    assert_eq!(
        (stranger.status, stranger.code()),
        (403, "upload_of_another_device")
    );
    assert_eq!(
        phone.head(&location).await.offset(),
        2000,
        "nothing moved it"
    );
    let bad_type = phone
        .patch_with(
            &location,
            2000,
            &photo[2000..3000],
            &[("content-type", "image/jpeg")],
        )
        .await;
    assert_eq!(bad_type.status, 415);
    let unknown = phone.head("/v1/photos/uploads/nope").await;
    assert_eq!(unknown.status, 404);

    // Whole photos that fail their checks: each discarded with its code.
    let heic = {
        let mut bytes = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic".to_vec();
        bytes.resize(4096, 0);
        bytes
    };
    let mut truncated = jpeg(4, 320, 240);
    truncated.truncate(truncated.len() / 2);
    let png = {
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(image::RgbImage::new(8, 8))
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("png");
        out
    };
    for (bytes, filetype, status, code) in [
        (heic, "image/jpeg", 415, "photo_unsupported_format"),
        (truncated, "image/jpeg", 422, "photo_truncated"),
        (png, "image/jpeg", 422, "photo_type_mismatch"),
    ] {
        let created = phone
            .create_with(
                bytes.len(),
                &[("sha256", sha256(&bytes).as_str()), ("filetype", filetype)],
            )
            .await;
        let reply = phone.patch(&created.location(), 0, &bytes).await;
        assert_eq!(
            (reply.status, reply.code()),
            (status, code),
            "{:?}",
            reply.body
        );
        assert_eq!(
            phone.head(&created.location()).await.status,
            404,
            "{code}: discarded"
        );
    }
    // Bytes that are not the announced photo.
    let created = phone
        .create_with(
            len,
            &[
                ("sha256", sha256(b"something else").as_str()),
                ("filetype", "image/jpeg"),
            ],
        )
        .await;
    let reply = phone.patch(&created.location(), 0, &photo).await;
    assert_eq!((reply.status, reply.code()), (422, "photo_hash_mismatch"));

    assert_eq!(stored_photos(&app).await, 0);
    assert!(objects(&app, "originals").await.is_empty());
    let open: i64 = app
        .with_conn(|conn| photo_uploads::table.count().get_result(conn))
        .await;
    assert_eq!(open, 1, "only the good upload in progress is left");
    assert_eq!(objects(&app, "uploads").await.len(), 2, "its two pieces");
}

/// A connection dropped in the middle of a piece: the server keeps every byte that arrived.
async fn a_dropped_connection_keeps_what_arrived(setup: Setup) {
    use tokio::io::AsyncWriteExt;
    let app = app(setup).await;
    let phone = device(&app, INSPECTOR).await;
    let photo = jpeg(5, 800, 600);
    let location = phone.create(&photo).await.location();
    let address = app.base.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let sent = photo.len() * 2 / 3;
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {}\r\n\
         tus-resumable: 1.0.0\r\nupload-offset: 0\r\ncontent-type: application/offset+octet-stream\r\n\
         content-length: {}\r\n\r\n",
        phone.token,
        photo.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    tcp.write_all(&photo[..sent]).await.expect("body");
    tcp.flush().await.expect("flush");
    drop(tcp);
    let mut offset = 0;
    for _ in 0..100 {
        offset = phone.head(&location).await.offset();
        if offset > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(offset, sent as i64, "every byte that arrived is kept");
    let rest = phone.patch(&location, sent, &photo[sent..]).await;
    assert_eq!(rest.offset(), photo.len() as i64, "{:?}", rest.body);
    assert_eq!(stored_photos(&app).await, 1);
}

async fn expired_uploads_and_stray_pieces_are_swept(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let phone = device(&app, INSPECTOR).await;
    let photo = jpeg(6, 320, 240);
    let location = phone.create(&photo).await.location();
    phone.patch(&location, 0, &photo[..2000]).await;
    // A piece written but never committed (a crash between the two), an hour old.
    let stray = app
        .db
        .dir
        .path()
        .join("photos/uploads/stray/000000000000-x");
    std::fs::create_dir_all(stray.parent().expect("parent")).expect("dir");
    std::fs::write(&stray, b"half a piece").expect("stray");
    let file = std::fs::File::options()
        .write(true)
        .open(&stray)
        .expect("open");
    file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        .expect("age it");
    assert_eq!(objects(&app, "uploads").await.len(), 2);

    // Not expired yet: the sweep keeps the live piece and removes the stray one.
    let state = app.state.clone();
    assert_eq!(
        gridpatrol_server::photos::sweep(&state)
            .await
            .expect("sweep"),
        1
    );
    assert_eq!(phone.head(&location).await.offset(), 2000);

    let past = gridpatrol_server::db::now() - chrono::Duration::hours(1);
    app.with_conn(move |conn| {
        diesel::update(photo_uploads::table)
            .set(photo_uploads::expires_at.eq(past))
            .execute(conn)
    })
    .await;
    let expired = phone.head(&location).await;
    assert_eq!(
        expired.status, 410,
        "an expired upload says so until it is swept"
    );
    assert_eq!(
        gridpatrol_server::photos::sweep(&state)
            .await
            .expect("sweep"),
        1
    );
    assert!(objects(&app, "uploads").await.is_empty());
    assert_eq!(phone.head(&location).await.status, 404);
    // The phone starts again and finishes.
    let done = phone.upload(&photo, 100_000).await;
    assert_eq!(done.offset(), photo.len() as i64);
}

/// Leaves an upload as a crash after its last piece's commit would: the bytes from `from` on
/// stored as a piece and committed (the upload's offset at its length), not completed; and, if
/// given, its expiry moved.
async fn left_whole_by_a_crash(
    app: &TestApp,
    location: &str,
    photo: &[u8],
    from: usize,
    expires_at: Option<chrono::NaiveDateTime>,
) {
    let id = location.rsplit('/').next().expect("id").to_string();
    let object = format!("uploads/{id}/{from:012}-crash");
    std::fs::write(
        app.db.dir.path().join("photos").join(&object),
        &photo[from..],
    )
    .expect("piece");
    let (start, length) = (from as i64, photo.len() as i64);
    app.with_conn(move |conn| {
        use gridpatrol_server::schema::photo_upload_chunks;
        diesel::insert_into(photo_upload_chunks::table)
            .values((
                photo_upload_chunks::upload_id.eq(&id),
                photo_upload_chunks::start.eq(start),
                photo_upload_chunks::stop.eq(length),
                photo_upload_chunks::object.eq(&object),
            ))
            .execute(conn)?;
        diesel::update(photo_uploads::table.find(&id))
            .set(photo_uploads::received.eq(length))
            .execute(conn)?;
        if let Some(at) = expires_at {
            diesel::update(photo_uploads::table.find(&id))
                .set(photo_uploads::expires_at.eq(at))
                .execute(conn)?;
        }
        Ok(())
    })
    .await;
}

/// Issue 21: a crash between the last piece's commit and the photo's completion left an upload
/// with every byte and no photo; HEAD answered `Upload-Offset = Upload-Length`, the phone took it
/// for done, and the sweep deleted the upload a day later. Now such an upload is never swept and
/// no answer shows the full offset before the photo is stored.
async fn a_whole_upload_cut_short_is_completed_never_swept(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let phone = device(&app, INSPECTOR).await;
    let photo = jpeg(9, 320, 240);
    let sha = sha256(&photo);
    let location = phone.create(&photo).await.location();
    phone.patch(&location, 0, &photo[..2000]).await;
    // The last piece stored and committed, as a crash would have left it, expired long ago.
    let length = photo.len() as i64;
    let past = gridpatrol_server::db::now() - chrono::Duration::days(2);
    left_whole_by_a_crash(&app, &location, &photo, 2000, Some(past)).await;
    // The sweep completes it instead of deleting it.
    gridpatrol_server::photos::sweep(&app.state)
        .await
        .expect("sweep");
    let held: i64 = app
        .with_conn({
            let sha = sha.clone();
            move |conn| photos::table.find(&sha).count().get_result(conn)
        })
        .await;
    assert_eq!(held, 1, "the sweep completed the whole upload");
    let head = phone.head(&location).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.offset(), length);
    assert_eq!(head.header("photo-stored"), Some("true"));
    assert!(
        objects(&app, "uploads").await.is_empty(),
        "its pieces are gone"
    );
    assert!(
        objects(&app, "originals")
            .await
            .iter()
            .any(|o| o.ends_with(&sha))
    );

    // And a HEAD alone completes one, before answering: never the full offset without the photo.
    let photo = jpeg(10, 320, 240);
    let location = phone.create(&photo).await.location();
    let partial = phone.patch(&location, 0, &photo[..1000]).await;
    assert_eq!(
        partial.header("photo-stored"),
        None,
        "not stored while bytes are missing"
    );
    let length = photo.len() as i64;
    left_whole_by_a_crash(&app, &location, &photo, 1000, None).await;
    let head = phone.head(&location).await;
    assert_eq!(
        (head.offset(), head.header("photo-stored")),
        (length, Some("true"))
    );
}

async fn thumbnails_and_previews_are_made_off_the_request_path(setup: Setup) {
    let app = app(setup).await;
    let phone = device(&app, INSPECTOR).await;
    let photo = jpeg(7, 1600, 1200);
    let sha = sha256(&photo);
    phone.upload(&photo, 1 << 20).await;
    let state = app.state.clone();
    // The worker runs in the background as photos arrive; run it here too, then wait for
    // whichever of the two took the photo.
    gridpatrol_server::photos::derive_pending(&state)
        .await
        .expect("derive");
    let mut derived = String::new();
    for _ in 0..200 {
        let info = app
            .get(&format!("/v1/photos/{sha}/info"), Some(&phone.token))
            .await;
        derived = info.body["derived"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if derived != "pending" && derived != "working" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(derived, "done");
    for (kind, long, url) in [
        (
            "thumbnail",
            320,
            format!("{}/v1/photos/{sha}/thumbnail", app.base),
        ),
        (
            "preview",
            1280,
            format!("{}/v1/photos/{sha}/preview", app.base),
        ),
    ] {
        let response = app
            .client
            .get(url)
            .bearer_auth(&phone.token)
            .send()
            .await
            .expect("get");
        assert_eq!(response.status().as_u16(), 200, "{kind}");
        assert!(
            response.headers()["cache-control"]
                .to_str()
                .expect("ascii")
                .contains("immutable")
        );
        let bytes = response.bytes().await.expect("bytes");
        let image = image::load_from_memory(&bytes).expect("decodes");
        assert_eq!(
            (image.width(), image.height()),
            (long, long * 3 / 4),
            "{kind}"
        );
    }
}

async fn only_people_who_may_see_the_patrol_may_see_its_photo(setup: Setup) {
    let app = app(setup).await;
    let phone = device(&app, INSPECTOR).await;
    let photo = jpeg(8, 320, 240);
    let sha = sha256(&photo);
    phone.upload(&photo, 1 << 20).await;
    let other = device(&app, OTHER_INSPECTOR).await;
    let leader = app.token(LEADER).await;
    for token in [&other.token, &leader] {
        let reply = app.get(&format!("/v1/photos/{sha}"), Some(token)).await;
        assert_eq!(
            (reply.status, reply.body["error"].as_str()),
            (404, Some("photo_not_found"))
        );
    }
    let bad = app.get("/v1/photos/not-a-hash", Some(&leader)).await;
    assert_eq!(bad.status, 400);
}

every_store!(
    a_photo_arrives_in_pieces_and_is_stored_once,
    a_photo_bigger_than_a_part_goes_in_one_piece,
    two_devices_uploading_the_same_photo_at_once_store_it_once,
    bad_uploads_get_their_own_codes_and_store_nothing,
    a_dropped_connection_keeps_what_arrived,
    thumbnails_and_previews_are_made_off_the_request_path,
    only_people_who_may_see_the_patrol_may_see_its_photo,
);

// The stray piece is planted in the local directory.
/// Issue 22, finding 6: one device opened 1,000 uploads announcing 20 GB. A device has at most
/// `GRIDPATROL_MAX_OPEN_UPLOADS` unfinished uploads announcing at most
/// `GRIDPATROL_MAX_OPEN_UPLOAD_MB`; beyond, 429 `too_many_open_uploads` and nothing kept; a
/// finished upload frees its place.
async fn a_device_cannot_hoard_open_uploads(backend: Backend) {
    let app = TestApp::with_demo_serving(
        backend,
        gridpatrol_server::config::ServeConfig {
            max_open_uploads: 3,
            max_open_upload_mb: 1,
            ..serve_config()
        },
    )
    .await;
    let phone = device(&app, INSPECTOR).await;
    let photos: Vec<Vec<u8>> = (0..5).map(|k| jpeg(40 + k, 160, 120)).collect();
    let mut open = Vec::new();
    for photo in &photos[..3] {
        let created = phone.create(photo).await;
        assert_eq!((created.status, created.offset()), (201, 0));
        open.push(created.location());
    }
    let before = app.table_counts().await;
    let refused = phone.create(&photos[3]).await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(refused.code(), "too_many_open_uploads");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(app.table_counts().await, before, "nothing kept");
    // Another phone is not held back by this one's uploads.
    let other = device(&app, OTHER_INSPECTOR).await;
    assert_eq!(other.create(&photos[3]).await.status, 201);

    // Finishing one frees its place.
    let done = phone.patch(&open[0], 0, &photos[0]).await;
    assert_eq!(done.status, 204, "{:?}", done.body);
    assert_eq!(phone.create(&photos[3]).await.status, 201);
    // Bytes announced count too: 1 MiB in all.
    let second = device(&app, "inspector-522632100003-1").await;
    let big = second
        .create_with(
            1024 * 1024 + 1,
            &[("sha256", &sha256(&photos[4])), ("filetype", "image/jpeg")],
        )
        .await;
    assert_eq!((big.status, big.code()), (429, "too_many_open_uploads"));
}

both_backends!(
    a_device_cannot_hoard_open_uploads,
    expired_uploads_and_stray_pieces_are_swept,
    a_whole_upload_cut_short_is_completed_never_swept,
);
