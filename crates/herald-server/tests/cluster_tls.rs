//! Nodes joined through a Redis that only speaks TLS (`rediss://`): the certificate is checked
//! against the system's trusted roots (here a test CA named by `SSL_CERT_FILE`, which this
//! test binary sets for itself), and publications cross nodes as over plain TCP. The test
//! starts a real `redis-server` with TLS (skipped, loudly, when it is not installed outside
//! CI).

mod common;

use std::process::Command;

use common::services::{Service, free_port, spawn, wait_for_port};
use common::{TestServer, WAIT};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_a_redis_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    // A CA and a certificate for 127.0.0.1 signed by it.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("server.pem"), server.pem()).unwrap();
    std::fs::write(path("server.key"), server_key.serialize_pem()).unwrap();
    // The only test of this binary: the trusted roots are the test CA.
    unsafe { std::env::set_var("SSL_CERT_FILE", path("ca.pem")) };

    let port = free_port();
    let mut command = Command::new("redis-server");
    command
        .args(["--port", "0", "--bind", "127.0.0.1", "--save", ""])
        .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
        .arg("--tls-cert-file")
        .arg(path("server.pem"))
        .arg("--tls-key-file")
        .arg(path("server.key"))
        .arg("--tls-ca-cert-file")
        .arg(path("ca.pem"));
    let Some(child) = spawn(command, "redis-server") else {
        return;
    };
    let _redis = Service(child);
    wait_for_port(port, "redis-server (TLS)");
    let url = format!("rediss://127.0.0.1:{port}/");
    let node = |name: &'static str| {
        let url = url.clone();
        TestServer::start_with(move |c| {
            c.node_name = name.into();
            c.broker.kind = "redis".into();
            c.broker.url = herald_server::config::Secret(url);
            c.broker.timeout_ms = 2000;
        })
    };
    let a = node("node-a").await;
    let b = node("node-b").await;
    let mut on_b = b.client().await;
    on_b.subscribe(&["secure"]).await.unwrap();
    a.admin()
        .publish(&["secure"], json!("over tls"))
        .await
        .unwrap();
    let m = on_b.next_op("message", WAIT).await.unwrap();
    assert_eq!(
        (m["data"].as_str(), m["offset"].as_u64()),
        (Some("over tls"), Some(1))
    );
}
