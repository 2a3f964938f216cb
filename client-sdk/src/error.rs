//! One flat error type for the whole SDK, each kind with a stable code an app can switch on
//! (`client-sdk/README.md` lists what an app should show for each).

/// What went wrong. `code()` is stable; the message is for logs and support.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum SdkError {
    /// The phone has not been enrolled yet.
    #[error("this phone is not enrolled: enroll it with the code from your supervisor")]
    NotEnrolled,
    /// The server refused the enrollment code (used, expired, unknown …).
    #[error("enrollment refused ({code}): {message}")]
    Enrollment { code: String, message: String },
    /// The device was revoked on the server. Local data stays on the phone.
    #[error("this phone was revoked by an administrator; your records stay on the phone")]
    DeviceRevoked,
    /// The session ended (refresh token expired or reused): enroll again. Local data stays.
    #[error("signed out ({code}): {message}")]
    SignedOut { code: String, message: String },
    /// No network, a timeout, or an unreachable server: try again later (the SDK backs off).
    #[error("network: {message}")]
    Network { message: String },
    /// The server's certificate was refused (unknown CA, expired, wrong name …), or the TLS
    /// handshake failed. Not retried: someone has to fix the server or the app's trusted roots.
    #[error("secure connection refused: {message}")]
    Tls { message: String },
    /// The server answered with an error.
    #[error("server error {status} ({code}): {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
        /// The server's `Retry-After` (503 `server_busy`, 429, 507): wait at least this long.
        retry_after_secs: Option<u64>,
    },
    /// The local store failed (disk full, corrupted file …).
    #[error("storage: {message}")]
    Storage { message: String },
    /// The app passed something invalid (unknown patrol, submitted patrol, bad coordinate …).
    #[error("invalid: {message}")]
    Invalid { message: String },
    /// The server's answer could not be understood (a newer protocol?).
    #[error("protocol: {message}")]
    Protocol { message: String },
}

impl SdkError {
    /// The stable code of this kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            SdkError::NotEnrolled => "not_enrolled",
            SdkError::Enrollment { .. } => "enrollment_refused",
            SdkError::DeviceRevoked => "device_revoked",
            SdkError::SignedOut { .. } => "signed_out",
            SdkError::Network { .. } => "network",
            SdkError::Tls { .. } => "tls",
            SdkError::Server { .. } => "server",
            SdkError::Storage { .. } => "storage",
            SdkError::Invalid { .. } => "invalid",
            SdkError::Protocol { .. } => "protocol",
        }
    }

    /// Worth retrying later without the user doing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            SdkError::Network { .. } => true,
            SdkError::Server { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> SdkError {
        SdkError::Invalid {
            message: message.into(),
        }
    }
}
