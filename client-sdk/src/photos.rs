//! The photo queue: photos attached on the phone, kept in the SDK's photo directory and uploaded
//! after the documents with the server's resumable upload (tus 1.0, content-addressed by
//! SHA-256). An upload resumes from the last byte the server holds, after a dropped connection
//! or the app being killed; the local copy is deleted only after the server's receipt, and only
//! if the app asked for that.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::{Client, META_PHOTO_PREFIX};
use crate::error::SdkError;
use crate::store::{self, Batch, Write};

/// The first PATCH of an upload carries at most this: 26 s at 40 kbit/s, well inside the 60 s
/// request timeout, so that a photo goes over 2G in pieces that each arrive instead of whole
/// requests that time out (the server keeps what arrived, but a timeout wastes the round).
/// Each next piece is what the last one's rate carries in [`PIECE_SECONDS`]: on a good link a
/// photo goes in two requests.
const PIECE: u64 = 128 * 1024;
const PIECE_SECONDS: f64 = 20.0;
const MIN_PIECE: u64 = 32 * 1024;

const TUS_VERSION: &str = "1.0.0";

/// How the SDK keeps and sends photos.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhotoOptions {
    /// Where attached photos are copied (created if missing). `None`: photos stay where the
    /// camera wrote them, and the app must keep them until they are uploaded.
    pub dir: Option<PathBuf>,
    /// Downscale JPEGs to this long edge before keeping them (EXIF kept). `None`: as the
    /// jurisdiction's photo policy says (from the server at enrollment: by default a long edge
    /// of 2048 px at JPEG quality 85), or as taken when it asks for originals.
    pub long_edge: Option<u32>,
    /// Delete the SDK's copy once the server has the photo.
    pub delete_after_upload: bool,
}

/// The size photos travel at, as the jurisdiction's policy sets it (`GET /v1/me`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhotoPolicy {
    pub long_edge: u32,
    pub jpeg_quality: u8,
    pub originals: bool,
}

/// Where a queued photo stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Upload {
    /// Not started, or started and not finished (`url` is the upload's address).
    #[default]
    Queued,
    /// The server holds the photo for good (its receipt: `Photo-Stored: true` on an answer about
    /// the upload; every byte having arrived is not enough).
    Uploaded,
    /// The server refused the photo (`code`): kept on the phone, not resent.
    Refused { code: String, message: String },
}

/// A photo in the upload queue, kept in the store as `photo:<sha256>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct QueuedPhoto {
    pub path: String,
    pub size: u64,
    pub patrol: String,
    /// The SDK's own copy (deleted after upload if the app asked).
    #[serde(default)]
    pub owned: bool,
    #[serde(default)]
    pub filetype: Option<String>,
    /// The upload's address on the server, once created.
    #[serde(default)]
    pub url: Option<String>,
    /// Bytes the server said it holds, last time it was asked.
    #[serde(default)]
    pub confirmed: u64,
    #[serde(default)]
    pub upload: Upload,
}

/// A photo file kept for upload.
pub(crate) struct Kept {
    pub sha256: String,
    pub path: PathBuf,
    pub size: u64,
    pub owned: bool,
    pub filetype: Option<String>,
}

impl QueuedPhoto {
    pub(crate) fn new(kept: Kept, patrol: &str) -> QueuedPhoto {
        QueuedPhoto {
            path: kept.path.to_string_lossy().into_owned(),
            size: kept.size,
            patrol: patrol.to_string(),
            owned: kept.owned,
            filetype: kept.filetype,
            url: None,
            confirmed: 0,
            upload: Upload::Queued,
        }
    }
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> SdkError {
    SdkError::invalid(format!("cannot read {}: {e}", path.display()))
}

fn storage(e: impl std::fmt::Display) -> SdkError {
    SdkError::Storage {
        message: format!("photo directory: {e}"),
    }
}

/// Reads the camera's file, downscales it if asked, and copies it into the photo directory
/// (written to a temporary name, synced, then renamed: a killed app leaves a whole file or
/// none). Returns what the queue needs.
pub(crate) fn keep(
    options: &PhotoOptions,
    policy: Option<&PhotoPolicy>,
    path: &Path,
) -> Result<Kept, SdkError> {
    let bytes = std::fs::read(path).map_err(|e| unreadable(path, e))?;
    if bytes.is_empty() {
        return Err(SdkError::invalid(format!("{} is empty", path.display())));
    }
    let format = gridpatrol_photo::sniff(&bytes).map_err(|e| SdkError::Invalid {
        message: format!("{}: {e}", path.display()),
    })?;
    // The app's choice first, then the jurisdiction's; a phone enrolled before the server said
    // keeps photos as taken (the next refresh of its grids brings the policy).
    let size = match (options.long_edge, policy) {
        (Some(edge), policy) => Some((edge, policy.map_or(85, |p| p.jpeg_quality))),
        (None, Some(policy)) if !policy.originals => Some((policy.long_edge, policy.jpeg_quality)),
        _ => None,
    };
    let bytes = match size {
        Some((edge, quality)) => gridpatrol_photo::downscale_keeping_exif(
            &bytes,
            edge,
            quality,
            &gridpatrol_photo::Limits::default(),
        )
        .map_err(|e| SdkError::Invalid {
            message: format!("{}: {e}", path.display()),
        })?,
        None => bytes,
    };
    let sha256 = hex(&Sha256::digest(&bytes));
    let filetype = Some(format.mime().to_string());
    let Some(dir) = &options.dir else {
        return Ok(Kept {
            sha256,
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            owned: false,
            filetype,
        });
    };
    std::fs::create_dir_all(dir).map_err(storage)?;
    let target = dir.join(format!("{sha256}.{}", format.extension()));
    if !target.exists() {
        let temporary = dir.join(format!("{sha256}.partial"));
        let mut file = std::fs::File::create(&temporary).map_err(storage)?;
        file.write_all(&bytes).map_err(storage)?;
        file.sync_all().map_err(storage)?;
        std::fs::rename(&temporary, &target).map_err(storage)?;
        if let Ok(directory) = std::fs::File::open(dir) {
            let _ = directory.sync_all();
        }
    }
    Ok(Kept {
        sha256,
        path: target,
        size: bytes.len() as u64,
        owned: true,
        filetype,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A queued photo as the app sees it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PhotoStatus {
    pub sha256: String,
    pub patrol: String,
    pub path: String,
    pub size: u64,
    /// Bytes the server holds (as last heard).
    pub uploaded_bytes: u64,
    /// `queued`, `uploaded` or `refused`.
    pub state: String,
    /// Why the server refused it (`photo_unsupported_format` …), when it did.
    pub refusal: Option<String>,
}

impl Client {
    fn queue(&self) -> Result<Vec<(String, QueuedPhoto)>, SdkError> {
        let snapshot = self.store.snapshot()?;
        snapshot
            .meta
            .iter()
            .filter_map(|(key, value)| {
                key.strip_prefix(META_PHOTO_PREFIX)
                    .map(|sha| store::decode::<QueuedPhoto>(value).map(|q| (sha.to_string(), q)))
            })
            .collect()
    }

    fn save_queued(&self, sha: &str, queued: &QueuedPhoto) -> Result<(), SdkError> {
        self.store.write(&Batch(vec![Write::Meta {
            key: format!("{META_PHOTO_PREFIX}{sha}"),
            value: store::encode(queued),
        }]))
    }

    /// Every photo attached on this phone and where its upload stands.
    pub fn photos(&self) -> Result<Vec<PhotoStatus>, SdkError> {
        Ok(self
            .queue()?
            .into_iter()
            .map(|(sha256, q)| PhotoStatus {
                sha256,
                patrol: q.patrol,
                path: q.path,
                size: q.size,
                uploaded_bytes: if q.upload == Upload::Uploaded {
                    q.size
                } else {
                    q.confirmed
                },
                state: match &q.upload {
                    Upload::Queued => "queued",
                    Upload::Uploaded => "uploaded",
                    Upload::Refused { .. } => "refused",
                }
                .into(),
                refusal: match q.upload {
                    Upload::Refused { code, .. } => Some(code),
                    _ => None,
                },
            })
            .collect())
    }

    /// Photos waiting for their upload: (SHA-256, file path).
    pub fn queued_photos(&self) -> Result<Vec<(String, String)>, SdkError> {
        Ok(self
            .queue()?
            .into_iter()
            .filter(|(_, q)| q.upload == Upload::Queued)
            .map(|(sha, q)| (sha, q.path))
            .collect())
    }

    /// Bytes of photos still to send (by what the server last said it holds).
    pub fn pending_photo_bytes(&self) -> Result<u64, SdkError> {
        Ok(self
            .queue()?
            .iter()
            .filter(|(_, q)| q.upload == Upload::Queued)
            .map(|(_, q)| q.size.saturating_sub(q.confirmed))
            .sum())
    }

    /// Uploads every queued photo, one after another. Returns (photos now held by the server,
    /// photos refused, bytes sent). A network failure stops the pass: what the server holds
    /// stays held, and the next pass resumes from there.
    pub(crate) async fn upload_photos(&self) -> Result<(u32, u32, u64), SdkError> {
        let (mut uploaded, mut refused, mut sent) = (0, 0, 0);
        for (sha, mut queued) in self.queue()? {
            if queued.upload != Upload::Queued {
                continue;
            }
            match self.upload_one(&sha, &mut queued, &mut sent).await {
                Ok(()) => {
                    queued.upload = Upload::Uploaded;
                    queued.confirmed = queued.size;
                    self.save_queued(&sha, &queued)?;
                    if self.photo_options.delete_after_upload && queued.owned {
                        let _ = std::fs::remove_file(&queued.path);
                    }
                    uploaded += 1;
                }
                Err(SdkError::Server {
                    status,
                    code,
                    message,
                    ..
                }) if (400..500).contains(&status) && code.starts_with("photo_") => {
                    queued.upload = Upload::Refused { code, message };
                    self.save_queued(&sha, &queued)?;
                    refused += 1;
                }
                Err(error) => return Err(error),
            }
            self.notify(&[queued.patrol.clone()]);
        }
        Ok((uploaded, refused, sent))
    }

    async fn upload_one(
        &self,
        sha: &str,
        queued: &mut QueuedPhoto,
        sent: &mut u64,
    ) -> Result<(), SdkError> {
        let mut bytes: Option<Vec<u8>> = None;
        // The offset the last PATCH answered, so that the next piece goes without asking again.
        let mut known: Option<u64> = None;
        // Rounds in a row that moved nothing; a photo of any size goes as long as each round
        // moves it on.
        let mut idle = 0;
        let mut piece_size = PIECE;
        while idle < 8 {
            let url = match &queued.url {
                Some(url) => url.clone(),
                None => {
                    let (url, offset, stored) = self.create_upload(sha, queued).await?;
                    queued.url = Some(url.clone());
                    queued.confirmed = offset;
                    self.save_queued(sha, queued)?;
                    if stored {
                        return Ok(());
                    }
                    url
                }
            };
            let (offset, stored) = match known.take() {
                Some(offset) => (offset, false),
                None => match self.upload_offset(&url).await {
                    Ok(answer) => answer,
                    // Expired or cleaned up: start a new upload.
                    Err(SdkError::Server {
                        status: 404 | 410, ..
                    }) => {
                        queued.url = None;
                        queued.confirmed = 0;
                        idle += 1;
                        continue;
                    }
                    Err(error) => return Err(error),
                },
            };
            if offset != queued.confirmed {
                queued.confirmed = offset;
                self.save_queued(sha, queued)?;
            }
            // Only the server's word that the photo is stored for good ends the upload: every
            // byte arriving is not enough (docs/PHOTOS.md).
            if stored {
                return Ok(());
            }
            if offset >= queued.size {
                idle += 1;
                continue;
            }
            if bytes.is_none() {
                let read = std::fs::read(&queued.path).map_err(|e| SdkError::Storage {
                    message: format!("the queued photo {} is gone: {e}", queued.path),
                })?;
                if read.len() as u64 != queued.size {
                    return Err(SdkError::Storage {
                        message: format!("the queued photo {} changed on disk", queued.path),
                    });
                }
                bytes = Some(read);
            }
            let all = bytes.as_deref().unwrap_or_default();
            // A piece at a time, each well inside the request timeout even at 40 kbit/s.
            let end = (offset + piece_size).min(queued.size);
            let piece = all[offset as usize..end as usize].to_vec();
            *sent += piece.len() as u64;
            let full = self.absolute(&url);
            let began = std::time::Instant::now();
            let result = self
                .authorized_once(|token| {
                    self.http
                        .patch(&full)
                        .bearer_auth(token)
                        .header("tus-resumable", TUS_VERSION)
                        .header("upload-offset", offset.to_string())
                        .header("content-type", "application/offset+octet-stream")
                        .body(piece.clone())
                })
                .await;
            match result {
                Ok(response) => {
                    let now = header_u64(&response, "upload-offset").unwrap_or(offset);
                    queued.confirmed = now;
                    self.save_queued(sha, queued)?;
                    if photo_stored(&response) {
                        return Ok(());
                    }
                    if now > offset {
                        idle = 0;
                        known = Some(now);
                        let rate = (now - offset) as f64 / began.elapsed().as_secs_f64().max(0.001);
                        piece_size = ((rate * PIECE_SECONDS) as u64).max(MIN_PIECE);
                    } else {
                        idle += 1;
                    }
                }
                // Someone moved the offset (an earlier request that got through): ask again.
                Err(SdkError::Server { status: 409, .. }) => idle += 1,
                Err(SdkError::Server {
                    status: 404 | 410, ..
                }) => {
                    queued.url = None;
                    queued.confirmed = 0;
                    idle += 1;
                }
                Err(error) => return Err(error),
            }
        }
        Err(SdkError::Protocol {
            message: format!("the upload of photo {sha} made no progress"),
        })
    }

    async fn create_upload(
        &self,
        sha: &str,
        queued: &QueuedPhoto,
    ) -> Result<(String, u64, bool), SdkError> {
        use base64::Engine;
        let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let mut metadata = format!("sha256 {}", encode(sha));
        if let Some(filetype) = &queued.filetype {
            metadata.push_str(&format!(",filetype {}", encode(filetype)));
        }
        if let Some(name) = Path::new(&queued.path).file_name() {
            metadata.push_str(&format!(",filename {}", encode(&name.to_string_lossy())));
        }
        let url = format!("{}/v1/photos/uploads", self.base_url);
        let response = self
            .authorized(|token| {
                self.http
                    .post(&url)
                    .bearer_auth(token)
                    .header("tus-resumable", TUS_VERSION)
                    .header("upload-length", queued.size.to_string())
                    .header("upload-metadata", metadata.clone())
            })
            .await?;
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| SdkError::Protocol {
                message: "the server created an upload without a Location".into(),
            })?
            .to_string();
        let offset = header_u64(&response, "upload-offset").unwrap_or(0);
        Ok((location, offset, photo_stored(&response)))
    }

    /// An upload's address as the server gave it (a path, or a whole URL).
    fn absolute(&self, url: &str) -> String {
        if url.starts_with("http://") || url.starts_with("https://") {
            url.to_string()
        } else {
            format!("{}{url}", self.base_url)
        }
    }

    /// Where an upload stands: the bytes the server holds, and whether the photo is stored.
    async fn upload_offset(&self, url: &str) -> Result<(u64, bool), SdkError> {
        let full = self.absolute(url);
        let response = self
            .authorized(|token| {
                self.http
                    .head(&full)
                    .bearer_auth(token)
                    .header("tus-resumable", TUS_VERSION)
            })
            .await?;
        let offset = header_u64(&response, "upload-offset").ok_or_else(|| SdkError::Protocol {
            message: "the server's answer lacks Upload-Offset".into(),
        })?;
        Ok((offset, photo_stored(&response)))
    }
}

/// The server's receipt: `Photo-Stored: true` (the original durable, its record committed).
fn photo_stored(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get("photo-stored")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

fn header_u64(response: &reqwest::Response, name: &str) -> Option<u64> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
