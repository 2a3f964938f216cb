//! A 2G-like link between phones and servers, in user space (the kernel here has no `netem`,
//! and there is no iptables): a TCP relay on 127.0.0.1 that limits the rate each way, delays
//! every piece by the link's latency, stalls now and then as a lost packet's retransmission
//! does, and goes down for whole outages (every connection across it is cut, and new ones are
//! refused until it comes back). Behind it, one or several servers take connections in turn, as
//! behind a load balancer; one that does not answer (killed) is skipped.
//!
//! Only loopback addresses are used. The relay stops with the test's runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the link is like.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Bytes per second, each way (40 kbit/s: 5,000).
    pub bytes_per_second: u64,
    /// One-way delay of every piece.
    pub latency: Duration,
    /// Chance that a piece (what one read brings, up to 16 KB: a TCP window's worth) stalls for
    /// `stall` (a lost packet resent).
    pub loss: f64,
    pub stall: Duration,
}

impl Profile {
    /// GPRS/EDGE in a village: 40 kbit/s, 300 ms each way, 7 % of pieces lost and resent after
    /// about a second.
    pub fn village_2g() -> Profile {
        Profile {
            bytes_per_second: 5_000,
            latency: Duration::from_millis(300),
            loss: 0.07,
            stall: Duration::from_millis(1_000),
        }
    }
}

/// A running link.
pub struct Link2g {
    /// `http://127.0.0.1:<port>`: what the phones are given.
    pub base: String,
    up: Arc<AtomicBool>,
    /// Bytes that crossed, phone to server and server to phone.
    pub upstream_bytes: Arc<AtomicU64>,
    pub downstream_bytes: Arc<AtomicU64>,
    /// Connections cut by outages.
    pub cuts: Arc<AtomicU64>,
    outage: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Link2g {
    /// Relays to the `upstreams` (`http://host:port` each), in turn.
    pub async fn start(upstreams: &[String], profile: Profile, seed: u64) -> Link2g {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let upstreams: Vec<String> = upstreams
            .iter()
            .map(|u| u.strip_prefix("http://").expect("plain HTTP").to_string())
            .collect();
        let up = Arc::new(AtomicBool::new(true));
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        let downstream_bytes = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicU64::new(0));
        let (outage, _) = tokio::sync::watch::channel(0u64);
        let outage = Arc::new(outage);
        let link = Link2g {
            base,
            up: up.clone(),
            upstream_bytes: upstream_bytes.clone(),
            downstream_bytes: downstream_bytes.clone(),
            cuts: cuts.clone(),
            outage: outage.clone(),
        };
        tokio::spawn(async move {
            let mut turn = 0usize;
            let mut connection = 0u64;
            while let Ok((phone, _)) = listener.accept().await {
                if !up.load(Ordering::SeqCst) {
                    drop(phone); // no signal: refused
                    continue;
                }
                connection += 1;
                // The next server that takes the connection, starting from the next in turn.
                let mut server = None;
                for k in 0..upstreams.len() {
                    let target = &upstreams[(turn + k) % upstreams.len()];
                    if let Ok(stream) = TcpStream::connect(target).await {
                        server = Some(stream);
                        turn = (turn + k + 1) % upstreams.len();
                        break;
                    }
                }
                let Some(server) = server else {
                    drop(phone);
                    continue;
                };
                let _ = phone.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let mut cut = outage.subscribe();
                cut.mark_unchanged();
                let (phone_read, phone_write) = phone.into_split();
                let (server_read, server_write) = server.into_split();
                let seed = seed ^ connection.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let a = pump(
                    phone_read,
                    server_write,
                    profile,
                    upstream_bytes.clone(),
                    seed,
                );
                let b = pump(
                    server_read,
                    phone_write,
                    profile,
                    downstream_bytes.clone(),
                    !seed,
                );
                let cuts = cuts.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = async { tokio::join!(a, b) } => {}
                        _ = cut.changed() => { cuts.fetch_add(1, Ordering::Relaxed); }
                    }
                });
            }
        });
        link
    }

    /// The link goes down: every connection is cut, new ones are refused, until [`Self::restore`].
    pub fn outage(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.outage.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Moves bytes one way at the profile's rate, latency and losses.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    profile: Profile,
    counted: Arc<AtomicU64>,
    mut seed: u64,
) {
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut buffer = vec![0u8; 16 * 1024];
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // A piece after a pause (a new request or answer) travels the link's latency first; the
        // pieces of a stream in flight follow each other.
        if last.is_none_or(|at| at.elapsed() > Duration::from_millis(50)) {
            tokio::time::sleep(profile.latency).await;
        }
        if random() < profile.loss {
            tokio::time::sleep(profile.stall).await;
        }
        // At the link's rate, a kilobyte at a time (so that a slow link trickles, as 2G does).
        for chunk in buffer[..read].chunks(1024) {
            tokio::time::sleep(Duration::from_secs_f64(
                chunk.len() as f64 / profile.bytes_per_second as f64,
            ))
            .await;
            if to.write_all(chunk).await.is_err() {
                return;
            }
        }
        counted.fetch_add(read as u64, Ordering::Relaxed);
        last = Some(tokio::time::Instant::now());
    }
    let _ = to.shutdown().await;
}
