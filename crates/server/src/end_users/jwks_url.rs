//! A JWKS fetched from a URL (`--jwt-jwks-url`; docs/operations.md, "End users"): one HTTP/1.1
//! GET with hyper (over rustls on ring for `https://`, trusting only the CA file given), its body
//! at most [`MAX_JWKS_BYTES`], the whole exchange within [`FETCH_TIMEOUT`].
//!
//! ```text
//!  public call ─▶ due? (never fetched; older than the refresh interval; a token names an unknown
//!     │           kid and the last fetch is older than MIN_REFETCH)
//!     ├─ no, or another call is fetching ─▶ verify with the keys there are
//!     └─ yes ─▶ GET url ─▶ new keys (a failure keeps the old ones, logged) ─▶ verify
//! ```
//!
//! No background task: a fetch runs inside the call that finds it due, one at a time, so an
//! idle server fetches nothing and nothing outlives the server.

use std::{path::Path, sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::{net::TcpStream, sync::Mutex, time::Instant};

use super::KeySetError;

/// Longest a fetch (connect, TLS, request, body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A token with an unknown `kid` triggers a fetch at most this often (a key rotation is picked
/// up at once; a flood of made-up kids costs one fetch per interval).
pub const MIN_REFETCH: Duration = Duration::from_secs(10);

/// Largest JWKS body accepted, bytes.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// The URL, how to reach it, and when it was last fetched.
pub(crate) struct JwksUrl {
    url: http::Uri,
    shown: String,
    tls: Option<tokio_rustls::TlsConnector>,
    refresh: Duration,
    /// When the last fetch started (`None`: never); held during a fetch (one at a time).
    last: Mutex<Option<Instant>>,
}

impl JwksUrl {
    pub(crate) fn new(
        url: &str,
        ca: Option<&Path>,
        refresh: Duration,
    ) -> Result<Self, KeySetError> {
        let malformed = |reason: &str| KeySetError::Malformed {
            path: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: http::Uri = url.parse().map_err(|_| malformed("not a URL"))?;
        if uri.host().is_none() {
            return Err(malformed("the URL has no host"));
        }
        let tls = match (uri.scheme_str(), ca) {
            (Some("http"), _) => None,
            (Some("https"), Some(ca)) => Some(connector(ca)?),
            (Some("https"), None) => {
                return Err(malformed(
                    "an https:// JWKS URL needs --jwt-jwks-ca (the CA of its server: no public \
                     roots are built in)",
                ));
            }
            _ => return Err(malformed("the URL must be http:// or https://")),
        };
        Ok(Self {
            url: uri,
            shown: url.to_owned(),
            tls,
            refresh,
            last: Mutex::new(None),
        })
    }

    /// The URL as configured, for messages.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// Whether a fetch is due (see the module docs); `false` while one runs.
    pub(crate) fn due(&self, unknown_kid: bool) -> bool {
        self.last
            .try_lock()
            .is_ok_and(|last| Self::is_due(*last, self.refresh, unknown_kid))
    }

    fn is_due(last: Option<Instant>, refresh: Duration, unknown_kid: bool) -> bool {
        match last {
            None => true,
            Some(at) => {
                let age = at.elapsed();
                age >= refresh || (unknown_kid && age >= MIN_REFETCH)
            }
        }
    }

    /// The JWKS, when a fetch is due and no other call is fetching; `None` otherwise.
    pub(crate) async fn fetch_if_due(&self, unknown_kid: bool) -> Option<Result<JwkSet, String>> {
        let mut last = self.last.try_lock().ok()?;
        if !Self::is_due(*last, self.refresh, unknown_kid) {
            return None;
        }
        *last = Some(Instant::now());
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await;
        Some(
            fetched.unwrap_or_else(|_| {
                Err(format!("no answer within {} ms", FETCH_TIMEOUT.as_millis()))
            }),
        )
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let host = self.url.host().unwrap_or_default();
        let port = self
            .url
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let authority = self
            .url
            .authority()
            .map_or_else(|| host.to_owned(), |a| a.as_str().to_owned());
        let request = http::Request::get(
            self.url
                .path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str),
        )
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
        let body = match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(|e| format!("server name: {e}"))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                get(TokioIo::new(stream), request).await?
            }
            None => get(TokioIo::new(tcp), request).await?,
        };
        serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))
    }
}

/// One request on a new HTTP/1.1 connection over `io`: the body of a 2xx answer.
async fn get<T>(io: T, request: http::Request<Empty<Bytes>>) -> Result<Bytes, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("HTTP status {}", response.status()));
        }
        Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .map_err(|e| format!("body: {e}"))
        // `sender` is dropped here: the connection then closes and `connection` ends.
    };
    let (body, _closed) = tokio::join!(exchange, connection);
    body
}

/// A TLS connector trusting only the CA certificates of the PEM file `ca` (rustls on ring).
#[expect(
    deprecated,
    reason = "ring is the deployment's TLS provider (tonic's tls-ring; aws-lc-rs stays out of the \
              graph), and rustls 0.23.48 deprecates ring's provider only for lacking post-quantum \
              key exchange"
)]
fn connector(ca: &Path) -> Result<tokio_rustls::TlsConnector, KeySetError> {
    let shown = ca.display().to_string();
    let pem = std::fs::read(ca).map_err(|source| KeySetError::Io {
        path: shown.clone(),
        source,
    })?;
    let malformed = |reason: String| KeySetError::Malformed {
        path: shown.clone(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| malformed(format!("not PEM certificates: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| malformed(format!("a certificate is refused: {e}")))?;
    }
    if roots.is_empty() {
        return Err(malformed("no certificate in the file".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| malformed(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;
    use crate::end_users::{DevKey, UserVerifier};

    /// An HTTP server answering every request with the JWKS in `body` (read at each request),
    /// counting the requests.
    async fn serve(
        body: Arc<std::sync::Mutex<String>>,
        count: Arc<AtomicUsize>,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let json = body.lock().unwrap().clone();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                    json.len()
                );
                socket.write_all(reply.as_bytes()).await.unwrap();
                let _ = socket.shutdown().await;
            }
        });
        (url, task)
    }

    #[tokio::test]
    async fn keys_are_fetched_refetched_for_a_new_kid_and_kept_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let first = DevKey::load_or_create(dir.path()).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let second = DevKey::load_or_create(other_dir.path()).unwrap();
        let body = Arc::new(std::sync::Mutex::new(
            serde_json::to_string(&first.jwks()).unwrap(),
        ));
        let count = Arc::new(AtomicUsize::new(0));
        let (url, server) = serve(Arc::clone(&body), Arc::clone(&count)).await;
        let verifier = UserVerifier::from_jwks_url(
            crate::end_users::DEV_ISSUER,
            None,
            &url,
            None,
            Duration::from_secs(3600),
        )
        .unwrap();
        let hour = Duration::from_secs(3600);
        let token = first.mint("alice", hour).unwrap();
        // Never fetched: due; fetched once, then not again within the refresh interval.
        assert!(verifier.needs_refresh(Some(&token)));
        verifier.refresh_if_needed(Some(&token)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(verifier.verify(&token).unwrap(), "alice");
        verifier.refresh_if_needed(Some(&token)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // A rotated key (a new kid): picked up once MIN_REFETCH has passed since the last fetch.
        let mut rotated = second.jwks();
        rotated.keys[0].common.key_id = Some("rotated".into());
        *body.lock().unwrap() = serde_json::to_string(&rotated).unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("rotated".into());
        let rotated_token = jsonwebtoken::encode(
            &header,
            &serde_json::json!({
                "iss": crate::end_users::DEV_ISSUER, "sub": "bob",
                "exp": jsonwebtoken::get_current_timestamp() + 3600,
            }),
            &jsonwebtoken::EncodingKey::from_ed_der(&second.pkcs8),
        )
        .unwrap();
        assert!(!verifier.needs_refresh(Some(&rotated_token)), "too soon");
        {
            let source = verifier.source.as_ref().unwrap();
            *source.last.lock().await = Some(Instant::now() - MIN_REFETCH);
        }
        assert!(verifier.needs_refresh(Some(&rotated_token)));
        verifier.refresh_if_needed(Some(&rotated_token)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert_eq!(verifier.verify(&rotated_token).unwrap(), "bob");
        // A server that is gone: the keys stay.
        server.abort();
        let _ = server.await;
        {
            let source = verifier.source.as_ref().unwrap();
            *source.last.lock().await = Some(Instant::now() - Duration::from_secs(7200));
        }
        verifier.refresh_if_needed(None).await;
        assert_eq!(verifier.verify(&rotated_token).unwrap(), "bob");
    }

    #[tokio::test]
    async fn an_unreachable_url_makes_every_token_unavailable_not_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let key = DevKey::load_or_create(dir.path()).unwrap();
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let verifier = UserVerifier::from_jwks_url(
            crate::end_users::DEV_ISSUER,
            None,
            &format!("http://127.0.0.1:{port}/jwks"),
            None,
            Duration::from_secs(3600),
        )
        .unwrap();
        let token = key.mint("alice", Duration::from_secs(3600)).unwrap();
        verifier.refresh_if_needed(Some(&token)).await;
        let err = verifier.verify(&token).unwrap_err();
        assert_eq!(err, crate::end_users::TokenError::KeysUnavailable);
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }

    #[test]
    fn urls_are_checked() {
        let hour = Duration::from_secs(3600);
        for (url, expect) in [
            ("ftp://x/jwks", "http:// or https://"),
            ("https://id.example/jwks", "--jwt-jwks-ca"),
            ("not a url", "not a URL"),
        ] {
            let err = UserVerifier::from_jwks_url("i", None, url, None, hour)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{url}: {err}");
        }
        let err = UserVerifier::from_jwks_url(
            "i",
            None,
            "https://id.example/jwks",
            Some(Path::new("/nonexistent/ca.pem")),
            hour,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
