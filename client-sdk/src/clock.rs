//! Time on a phone: the device clock (which the user can set wrong) and a monotonic clock (which
//! only moves forward, and restarts at boot). The SDK records both, and estimates the device
//! clock's error from the server's clock in every sync response.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The clocks the SDK reads. Tests substitute a clock that is hours wrong.
pub trait Clock: Send + Sync {
    /// The device's wall clock, milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// A monotonic clock, milliseconds since an arbitrary start (boot, or this process).
    fn monotonic_ms(&self) -> i64;
}

/// The real clocks.
pub struct SystemClock {
    start: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn monotonic_ms(&self) -> i64 {
        self.start.elapsed().as_millis() as i64
    }
}

/// The device clock's error against the server, from one round trip: the server's clock read
/// while the request was in flight, against the midpoint of the device's send and receive times.
/// Positive when the device is behind.
pub fn skew_ms(sent_ms: i64, received_ms: i64, server_ms: i64) -> i64 {
    server_ms - (sent_ms + (received_ms - sent_ms) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_measured_against_the_round_trip_midpoint() {
        // A device two hours slow: sent at 1000, the server read 7_201_500, received at 2000.
        assert_eq!(skew_ms(1_000, 2_000, 7_201_500), 7_200_000);
        assert_eq!(skew_ms(1_000, 2_000, 1_500), 0);
    }
}
