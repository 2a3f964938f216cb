//! A bad network between a phone and the test server: a TCP relay that counts what crosses it
//! and, when armed, cuts the connection after a given number of bytes from the phone, as a 2G
//! link does in the middle of an upload.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running relay; stops with the test's runtime.
pub struct FlakyLink {
    /// `http://127.0.0.1:<port>`: give this to the phone instead of the server's address.
    pub base: String,
    /// Bytes the phone may still send before the cut; negative when disarmed.
    budget: Arc<AtomicI64>,
    /// Bytes from the phone that crossed the link.
    pub upstream_bytes: Arc<AtomicU64>,
    /// Connections cut.
    pub cuts: Arc<AtomicU64>,
    /// Bytes per second from the phone (0: as fast as loopback goes).
    pace: Arc<AtomicU64>,
}

impl FlakyLink {
    /// Relays to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> FlakyLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let upstream = upstream
            .strip_prefix("http://")
            .expect("plain-HTTP upstream")
            .to_string();
        let budget = Arc::new(AtomicI64::new(-1));
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicU64::new(0));
        let pace = Arc::new(AtomicU64::new(0));
        let counters = Counters {
            budget: budget.clone(),
            counted: upstream_bytes.clone(),
            cuts: cuts.clone(),
            pace: pace.clone(),
        };
        tokio::spawn(async move {
            while let Ok((phone, _)) = listener.accept().await {
                let (counters, upstream) = (counters.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    relay(phone, server, counters).await;
                });
            }
        });
        FlakyLink {
            base,
            budget,
            upstream_bytes,
            cuts,
            pace,
        }
    }

    /// Cuts the connection carrying the phone's `after`-th byte from now (once).
    pub fn cut_after(&self, after: u64) {
        self.budget.store(after as i64, Ordering::SeqCst);
    }

    /// Whether an armed cut has happened.
    pub fn has_cut(&self) -> bool {
        self.budget.load(Ordering::SeqCst) < 0
    }

    pub fn disarm(&self) {
        self.budget.store(-1, Ordering::SeqCst);
    }

    /// Limits the phone's sending to `bytes_per_second`, as a mobile link does (0: no limit).
    pub fn pace(&self, bytes_per_second: u64) {
        self.pace.store(bytes_per_second, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Counters {
    budget: Arc<AtomicI64>,
    counted: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    pace: Arc<AtomicU64>,
}

async fn relay(phone: TcpStream, server: TcpStream, counters: Counters) {
    let Counters {
        budget,
        counted,
        cuts,
        pace,
    } = counters;
    let (mut phone_read, phone_write) = phone.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (cut_tx, mut cut_rx) = tokio::sync::watch::channel(false);
    // Server to phone, until the cut; after it the server's answers are read and dropped, so
    // that the server's side closes cleanly and keeps every byte that crossed.
    let down = tokio::spawn(async move {
        let mut phone_write = Some(phone_write);
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                read = server_read.read(&mut buffer) => {
                    let Ok(read) = read else { break };
                    if read == 0 {
                        break;
                    }
                    // The cut is announced before the server's end is shut, so before the
                    // server can answer what the cut left it; both may be ready at once here,
                    // and `select!` picks either: look at the cut first.
                    if *cut_rx.borrow() {
                        phone_write = None;
                    }
                    if let Some(phone) = phone_write.as_mut()
                        && phone.write_all(&buffer[..read]).await.is_err()
                    {
                        phone_write = None;
                    }
                }
                changed = cut_rx.changed(), if phone_write.is_some() => {
                    if changed.is_err() || *cut_rx.borrow() {
                        // The phone's side of the link is gone.
                        phone_write = None;
                    }
                }
            }
        }
        if let Some(mut phone) = phone_write {
            let _ = phone.shutdown().await;
        }
    });
    let mut buffer = vec![0u8; 4 * 1024];
    while let Ok(read) = phone_read.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        // Take what the budget allows; the byte that exhausts it is never delivered.
        let allowed = loop {
            let left = budget.load(Ordering::SeqCst);
            if left < 0 {
                break read;
            }
            let take = (left as usize).min(read);
            let next = if take < read { -1 } else { left - read as i64 };
            if budget
                .compare_exchange(left, next, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                break take;
            }
        };
        if allowed > 0 && server_write.write_all(&buffer[..allowed]).await.is_err() {
            break;
        }
        counted.fetch_add(allowed as u64, Ordering::Relaxed);
        let rate = pace.load(Ordering::Relaxed);
        if rate > 0 {
            tokio::time::sleep(std::time::Duration::from_secs_f64(
                allowed as f64 / rate as f64,
            ))
            .await;
        }
        if allowed < read {
            cuts.fetch_add(1, Ordering::Relaxed);
            let _ = cut_tx.send(true);
            break;
        }
    }
    // What crossed reaches the server, then its end closes; the phone's end is dropped at once,
    // as when the radio link goes.
    drop(phone_read);
    let _ = server_write.shutdown().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), down).await;
}
