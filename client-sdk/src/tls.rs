//! HTTPS: which certificate authorities the SDK trusts, and how a certificate failure is told
//! apart from a dropped connection.
//!
//! The SDK brings its own TLS (rustls on the `ring` provider) and its own root list, so it
//! behaves the same on Android, iOS and a desktop, and needs no JNI set-up on Android. A
//! deployment whose server certificate comes from its own CA (a county intranet) or from a CA
//! outside the Mozilla root programme passes that root with [`Trust::OnlyPem`].

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::SdkError;

/// Which certificate authorities an `https://` server's certificate may chain to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// The CAs of the Mozilla root programme, built into the SDK (`webpki-roots`).
    #[default]
    PublicRoots,
    /// Only the root certificates in this PEM text (one or more `BEGIN CERTIFICATE` blocks):
    /// the deployment's own CA. Public CAs are then not trusted at all.
    OnlyPem(String),
}

/// The rustls configuration for `trust`. A PEM text without a single usable certificate is
/// refused here, when the SDK opens, rather than at the first sync in a village.
pub(crate) fn client_config(trust: &Trust) -> Result<rustls::ClientConfig, SdkError> {
    let mut roots = rustls::RootCertStore::empty();
    match trust {
        Trust::PublicRoots => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Trust::OnlyPem(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| {
                    SdkError::invalid(format!("the trusted certificates are not valid PEM: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    SdkError::invalid(format!("a trusted certificate cannot be used: {e}"))
                })?;
            }
            if roots.is_empty() {
                return Err(SdkError::invalid(
                    "the trusted certificates hold no CERTIFICATE block",
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SdkError::invalid(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The TLS failure behind a request error, if that is what it was. reqwest wraps it in hyper's
/// error, which wraps an `io::Error`, whose `source()` skips its own payload: so the walk steps
/// into each `io::Error`'s payload instead.
pub(crate) fn tls_failure<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|payload| payload as _),
            None => error.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_roots_hold_the_mozilla_list() {
        assert!(client_config(&Trust::PublicRoots).is_ok());
        assert!(webpki_roots::TLS_SERVER_ROOTS.len() > 100);
    }

    #[test]
    fn pem_without_a_certificate_is_refused_when_opening() {
        for pem in [
            "",
            "not a certificate",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        ] {
            let error = client_config(&Trust::OnlyPem(pem.into())).expect_err(pem);
            assert_eq!(error.code(), "invalid", "{pem:?}: {error}");
        }
    }

    #[test]
    fn a_tls_error_is_found_inside_io_errors() {
        let io = std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        let wrapped = std::io::Error::other(io);
        assert!(matches!(
            tls_failure(&wrapped),
            Some(rustls::Error::InvalidCertificate(_))
        ));
        assert!(tls_failure(&std::io::Error::other("reset")).is_none());
    }
}
