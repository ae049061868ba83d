//! docs/shadowing.md, "How requests are handled": https:// targets with a private CA,
//! failures without it, and `--insecure-skip-verify`.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::support::*;

/// A private CA, a server certificate for `localhost` signed by it, and the CA's PEM in
/// a temporary file.
struct Pki {
    acceptor: TlsAcceptor,
    ca_file: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        let ca_file = std::env::temp_dir().join(format!("tm-ca-{name}-{}.pem", std::process::id()));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            ca_file,
        }
    }

    fn ca(&self) -> &str {
        self.ca_file.to_str().unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

#[tokio::test]
async fn https_main_with_private_ca() {
    let pki = Pki::new("main");
    let main = MockBackend::start_tls(Reply::ok("secure"), pki.acceptor.clone()).await;
    let proxy = TestProxy::start(&["--main", &main.https_url(), "--ca-cert", pki.ca()]).await;
    let resp = send(Method::POST, &proxy.url("/tls?x=1"), &[], "over tls").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body, "secure");
    let got = main.next().await;
    assert_eq!(got.uri.path_and_query().unwrap(), "/tls?x=1");
    assert_eq!(got.body, "over tls");
    assert_eq!(
        got.header("host"),
        Some(format!("localhost:{}", main.addr.port()).as_str())
    );
}

#[tokio::test]
async fn https_main_with_unknown_ca_is_502() {
    let pki = Pki::new("unknown");
    let main = MockBackend::start_tls(Reply::ok("secure"), pki.acceptor.clone()).await;
    let proxy = TestProxy::start(&["--main", &main.https_url()]).await;
    let resp = get(&proxy.url("/")).await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert_eq!(main.count(), 0);
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate() {
    let pki = Pki::new("insecure");
    let main = MockBackend::start_tls(Reply::ok("secure"), pki.acceptor.clone()).await;
    let proxy = TestProxy::start(&["--main", &main.https_url(), "--insecure-skip-verify"]).await;
    assert_eq!(get(&proxy.url("/")).await.body, "secure");
}

#[tokio::test]
async fn https_mirror_gets_copies_and_tls_errors_are_failures() {
    let pki = Pki::new("mirror");
    let other = Pki::new("other");
    let good = MockBackend::start_tls(Reply::ok("m"), pki.acceptor.clone()).await;
    let bad = MockBackend::start_tls(Reply::ok("m"), other.acceptor.clone()).await;
    let (_main, proxy) = TestProxy::in_front_of(Reply::ok("main"), &["--ca-cert", pki.ca()]).await;
    proxy
        .add_mirrors(&[&good.https_url(), &bad.https_url()])
        .await;
    send(
        Method::PUT,
        &proxy.url("/copy"),
        &[],
        Bytes::from_static(b"data"),
    )
    .await;
    let got = good.next().await;
    assert_eq!(got.method, Method::PUT);
    assert_eq!(got.body, "data");
    eventually("TLS failure counted", || async {
        proxy.mirror_json(&bad.https_url()).await.unwrap()["failed"] == 1
    })
    .await;
    assert_eq!(bad.count(), 0);
}

#[tokio::test]
async fn replay_to_an_https_target_trusts_the_ca_given_with_ca_cert() {
    use crate::record::{goreplay_fixture, replay};
    let pki = Pki::new("replay");
    let target = MockBackend::start_tls(Reply::ok(""), pki.acceptor.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = goreplay_fixture(dir.path());
    let file = file.to_str().unwrap();
    let to = target.https_url();
    let args = [file, "--to", &to, "--speed", "0"];
    // Without the CA the target's certificate is refused: nothing answered, exit 3.
    let (code, stdout, stderr) = replay(&args).await;
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert_eq!(target.count(), 0);
    // A CA file that cannot be read is named before anything is sent.
    let missing = dir.path().join("no-such-ca.pem");
    let missing = missing.to_str().unwrap();
    let (code, stdout, stderr) = replay(&[&args[..], &["--ca-cert", missing]].concat()).await;
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert!(stderr.contains("no-such-ca.pem"), "{stderr}");
    assert_eq!(target.count(), 0);
    // With it, both requests of the fixture arrive.
    let (code, stdout, stderr) = replay(&[&args[..], &["--ca-cert", pki.ca()]].concat()).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let first = target.next().await;
    assert_eq!(first.uri.path(), "/api/items");
    assert_eq!(target.next().await.uri.path(), "/health");
}
