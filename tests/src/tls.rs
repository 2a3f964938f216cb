//! An HTTPS front for a test server, as a deployment's reverse proxy would put one: a private CA
//! made for the test, a certificate for `localhost` signed by it, and a TLS listener that hands
//! each decrypted connection to the plain-HTTP server behind it.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};

/// A running HTTPS front; stops with the test's runtime.
pub struct TlsFront {
    /// `https://localhost:<port>`, the name on the certificate.
    pub base: String,
    /// The same listener by IP address, which the certificate does not name.
    pub base_by_ip: String,
    /// The test CA's root certificate, as a deployment hands it to its app.
    pub ca_pem: String,
}

/// A CA of its own: the root certificate (PEM) and an issuer for leaf certificates.
pub fn test_ca(name: &str) -> (String, CertifiedIssuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let issuer =
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca");
    (issuer.pem(), issuer)
}

impl TlsFront {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> TlsFront {
        let (ca_pem, ca) = test_ca("GridPatrol test CA");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .expect("leaf params")
            .signed_by(&leaf_key, &ca)
            .expect("leaf");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let upstream = upstream
            .strip_prefix("http://")
            .expect("plain-HTTP upstream")
            .to_string();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    // A refused handshake is the client's business; the front just drops it.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront {
            base: format!("https://localhost:{port}"),
            base_by_ip: format!("https://127.0.0.1:{port}"),
            ca_pem,
        }
    }
}
