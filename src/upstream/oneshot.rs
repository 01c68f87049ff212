//! One request on a fresh HTTPS connection, for the rare calls that are not the API's traffic:
//! a token endpoint. Verified TLS (Mozilla roots plus the endpoint's extra roots), the
//! endpoint's own host name for SNI and verification even when `connect_to` dials elsewhere,
//! HTTP/1.1, a deadline over the whole exchange and a bound on the answer it reads.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::credential::mint::Endpoint;

/// Sends `req` (absolute `https://` URI) and reads at most `limit` bytes of the answer.
/// Errors are short descriptions with no body, header or URL query in them.
pub async fn exchange(
    endpoint: &Endpoint,
    req: Request<Bytes>,
    limit: usize,
    deadline: Duration,
) -> Result<(StatusCode, Bytes), String> {
    tokio::time::timeout(deadline, send(endpoint, req, limit))
        .await
        .map_err(|_| format!("no answer within {} s", deadline.as_secs()))?
}

async fn send(
    endpoint: &Endpoint,
    mut req: Request<Bytes>,
    limit: usize,
) -> Result<(StatusCode, Bytes), String> {
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("https") {
        return Err("the token endpoint must be https".into());
    }
    let host = uri
        .host()
        .ok_or("the token endpoint has no host")?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = match endpoint.connect_to {
        Some(addr) => TcpStream::connect(addr).await,
        None => TcpStream::connect((host.as_str(), port)).await,
    }
    .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = tcp.set_nodelay(true);
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in &endpoint.roots {
        roots
            .add(cert.clone())
            .map_err(|e| format!("trust roots: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.clone())
        .map_err(|_| "the token endpoint's host is not a server name")?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(conn);
    // Origin-form with the endpoint's Host (RFC 9112 section 3.2).
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or(host);
    if let Ok(h) = http::HeaderValue::from_str(&authority) {
        req.headers_mut().insert(http::header::HOST, h);
    }
    let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    *req.uri_mut() = pq.parse().map_err(|_| "the token endpoint's path")?;
    let resp = sender
        .send_request(req.map(Full::new))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|_| format!("the answer is larger than {limit} bytes or broke off"))?
        .to_bytes();
    Ok((status, body))
}
