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
        let (b, u, c) = (budget.clone(), upstream_bytes.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((phone, _)) = listener.accept().await {
                let (b, u, c, upstream) = (b.clone(), u.clone(), c.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    relay(phone, server, b, u, c).await;
                });
            }
        });
        FlakyLink {
            base,
            budget,
            upstream_bytes,
            cuts,
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
}

async fn relay(
    phone: TcpStream,
    server: TcpStream,
    budget: Arc<AtomicI64>,
    counted: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
) {
    let (mut phone_read, mut phone_write) = phone.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut phone_write).await;
        let _ = phone_write.shutdown().await;
    });
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(read) = phone_read.read(&mut buffer).await {
        if read == 0 {
            let _ = server_write.shutdown().await;
            let _ = down.await;
            return;
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
                break if take < read { take } else { read };
            }
        };
        if allowed > 0 && server_write.write_all(&buffer[..allowed]).await.is_err() {
            break;
        }
        counted.fetch_add(allowed as u64, Ordering::Relaxed);
        if allowed < read {
            cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    // Cut (or broken): both directions die at once, as when the radio link drops.
    down.abort();
}
