//! What a new connection costs with TLS (docs/operations.md, "Security"): starts one sagaflow
//! server on 127.0.0.1 per mode (plaintext, TLS, TLS with a client certificate: mTLS), and for
//! each opens `N` fresh connections one after the other, each making one health check, then
//! makes `N` health checks on one connection. Prints the median and p99 per connection and per
//! call, microseconds. Certificates are made at start (rcgen, ECDSA P-256).
//!
//! ```sh
//! cargo run --release -p sagaflow-server --example handshake -- 500
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use sagaflow_server::{grpc, tls::Tls};
use tonic::{
    service::RoutesBuilder,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> (String, String) {
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn percentiles(mut samples: Vec<Duration>) -> (u128, u128) {
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index].as_micros()
    };
    (at(0.5), at(0.99))
}

async fn check(channel: Channel) {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "bench CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let (server_cert, server_key) = leaf(&ca, "order");
    let (client_cert, client_key) = leaf(&ca, "orchestrator");
    let ca_pem = ca.pem();

    println!("mode        new connection p50 / p99 (µs)   call on one connection p50 / p99 (µs)");
    for mode in ["plaintext", "tls", "mtls"] {
        let tls = (mode != "plaintext").then(|| {
            Tls::from_pem(
                Some((server_cert.as_bytes(), server_key.as_bytes())),
                Some(ca_pem.as_bytes()),
            )
        });
        let options = grpc::ServerOptions {
            tls: tls.as_ref().and_then(Tls::server_config),
            ..grpc::ServerOptions::default()
        };
        let server = grpc::spawn(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            RoutesBuilder::default(),
            &[],
            options,
        )
        .await
        .unwrap();
        let endpoint = || {
            let scheme = if mode == "plaintext" { "http" } else { "https" };
            let endpoint = Endpoint::from_shared(format!("{scheme}://{}", server.addr())).unwrap();
            if mode == "plaintext" {
                return endpoint;
            }
            let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
            if mode == "mtls" {
                config = config.identity(Identity::from_pem(&client_cert, &client_key));
            }
            endpoint.tls_config(config).unwrap()
        };
        // Warm up.
        check(endpoint().connect().await.unwrap()).await;
        let mut connections = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            check(endpoint().connect().await.unwrap()).await;
            connections.push(started.elapsed());
        }
        let channel = endpoint().connect().await.unwrap();
        let mut calls = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            check(channel.clone()).await;
            calls.push(started.elapsed());
        }
        let (c50, c99) = percentiles(connections);
        let (k50, k99) = percentiles(calls);
        println!("{mode:<11} {c50:>8} / {c99:<8}                  {k50:>8} / {k99:<8}");
        server.shutdown().await.unwrap();
    }
}
