//! docs/security.md, "TLS on the listener": `--tls-cert` and `--tls-key` make the
//! listener speak TLS (HTTP/1.1 and HTTP/2 by ALPN), the files are followed as
//! cert-manager rotates them, and bad files are start-up errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

/// A private CA that issues certificates for `localhost`.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM, and the certificate as the client sees it.
struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A certificate for `localhost` with `name` as its common name.
    fn issue(&self, name: &str) -> Pair {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        params.distinguished_name = subject;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client trusting only this CA, offering `alpn`.
    fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

/// Certificate files laid out as Kubernetes mounts a cert-manager Secret: `tls.crt` and
/// `tls.key` are symlinks through `..data`, which points at a versioned directory and is
/// swapped by a rename when the Secret changes.
struct CertDir {
    dir: tempfile::TempDir,
    version: usize,
}

impl CertDir {
    fn new(pair: &Pair) -> CertDir {
        let mut certs = CertDir {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        certs.install(&pair.cert_pem, &pair.key_pem);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(Path::new("..data").join(name), certs.dir.path().join(name))
                .unwrap();
        }
        certs
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Writes the pair aside in a new version directory, then renames the `..data` link
    /// over the old one: the two files change at once.
    fn install(&mut self, cert_pem: &str, key_pem: &str) {
        self.version += 1;
        let root = self.dir.path();
        let version = format!("..v{}", self.version);
        std::fs::create_dir(root.join(&version)).unwrap();
        std::fs::write(root.join(&version).join("tls.crt"), cert_pem).unwrap();
        std::fs::write(root.join(&version).join("tls.key"), key_pem).unwrap();
        std::os::unix::fs::symlink(&version, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    }

    fn flags(&self) -> [String; 4] {
        [
            "--tls-cert".to_owned(),
            self.cert().display().to_string(),
            "--tls-key".to_owned(),
            self.key().display().to_string(),
        ]
    }
}

/// One client connection over TLS, HTTP/1.1 or HTTP/2 as negotiated.
struct TlsClient {
    sender: Sender,
    /// The certificate the proxy presented.
    peer_cert: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
    port: u16,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// What a [`TlsClient`] request got back.
struct Got {
    status: StatusCode,
    version: Version,
    body: Bytes,
}

impl TlsClient {
    /// Connects to `addr` as `localhost`, offering `alpn`.
    async fn connect(ca: &Ca, addr: impl tokio::net::ToSocketAddrs, alpn: &[&[u8]]) -> TlsClient {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let port = tcp.peer_addr().unwrap().port();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio::time::timeout(WAIT, ca.connector(alpn).connect(name, tcp))
            .await
            .expect("handshake in time")
            .expect("handshake succeeds");
        let (_, session) = tls.get_ref();
        let peer_cert = session.peer_certificates().unwrap()[0].clone();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        TlsClient {
            sender,
            peer_cert,
            alpn,
            port,
        }
    }

    async fn get(&mut self, path: &str) -> Got {
        let req = Request::get(format!("https://localhost:{}{path}", self.port));
        let response = match &mut self.sender {
            Sender::H1(sender) => {
                let req = req
                    .header("host", format!("localhost:{}", self.port))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                tokio::time::timeout(WAIT, sender.send_request(req)).await
            }
            Sender::H2(sender) => {
                let req = req
                    .version(Version::HTTP_2)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                tokio::time::timeout(WAIT, sender.send_request(req)).await
            }
        };
        let response = response.expect("an answer in time").expect("an answer");
        let (parts, body) = response.into_parts();
        Got {
            status: parts.status,
            version: parts.version,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}

const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1_ONLY: &[&[u8]] = &[b"http/1.1"];

/// A proxy in this process with TLS from `certs`, and extra flags.
async fn tls_proxy(certs: &CertDir, main: &MockBackend, extra: &[&str]) -> TestProxy {
    let flags = certs.flags();
    let main_url = main.url();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["--main", &main_url]);
    args.extend_from_slice(extra);
    TestProxy::start(&args).await
}

#[tokio::test]
async fn https_http1_client_goes_through_to_a_plain_main_and_mirrors_get_copies() {
    let ca = Ca::new();
    let certs = CertDir::new(&ca.issue("proxy"));
    let main = MockBackend::start(Reply::ok("from main")).await;
    let mirror = MockBackend::start(Reply::ok("mirror")).await;
    let proxy = tls_proxy(&certs, &main, &["--mirror", &mirror.url()]).await;

    let mut client = TlsClient::connect(&ca, proxy.addr, H1_ONLY).await;
    assert_eq!(client.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let got = client.get("/h1?x=1").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.version, Version::HTTP_11);
    assert_eq!(got.body, "from main");
    let at_main = main.next().await;
    assert_eq!(at_main.uri.path_and_query().unwrap(), "/h1?x=1");
    assert_eq!(at_main.header("x-forwarded-proto"), Some("https"));
    let copy = mirror.next().await;
    assert_eq!(copy.uri.path_and_query().unwrap(), "/h1?x=1");
    assert_eq!(copy.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn http2_over_tls_is_served_as_http2_and_main_sees_https() {
    let ca = Ca::new();
    let certs = CertDir::new(&ca.issue("proxy"));
    let main = MockBackend::start(Reply::ok("h2 answer")).await;
    let mirror = MockBackend::start(Reply::ok("mirror")).await;
    let proxy = tls_proxy(&certs, &main, &["--mirror", &mirror.url()]).await;

    let mut client = TlsClient::connect(&ca, proxy.addr, H2_AND_H1).await;
    assert_eq!(client.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(client.peer_cert, current_cert_der(&certs));
    for i in 0..2 {
        let got = client.get(&format!("/grpc-like/{i}")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.version, Version::HTTP_2);
        assert_eq!(got.body, "h2 answer");
        let at_main = main.next().await;
        assert_eq!(at_main.uri.path(), format!("/grpc-like/{i}"));
        assert_eq!(at_main.header("x-forwarded-proto"), Some("https"));
        let copy = mirror.next().await;
        assert_eq!(copy.uri.path(), format!("/grpc-like/{i}"));
    }
}

/// The certificate currently in the directory, as DER.
fn current_cert_der(certs: &CertDir) -> CertificateDer<'static> {
    let pem = std::fs::read(certs.cert()).unwrap();
    rustls_pki_types::pem::PemObject::from_pem_slice(&pem).unwrap()
}

#[tokio::test]
async fn admin_endpoint_answers_over_tls_or_on_its_own_cleartext_address() {
    let ca = Ca::new();
    let certs = CertDir::new(&ca.issue("proxy"));
    let main = MockBackend::start(Reply::ok("main")).await;
    let mirror = MockBackend::start(Reply::ok("mirror")).await;

    let shared = tls_proxy(&certs, &main, &["--mirror", &mirror.url()]).await;
    let mut client = TlsClient::connect(&ca, shared.addr, H2_AND_H1).await;
    let got = client.get("/targets").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&got.body).contains(&mirror.url()),
        "{:?}",
        got.body
    );
    assert_eq!(main.count(), 0, "the admin path is not proxied");

    let separate = tls_proxy(&certs, &main, &["--targets-address", ":0"]).await;
    let listed = get(&separate.admin_url("")).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text());
    // On the TLS listener the admin path is now proxied like any other.
    let mut client = TlsClient::connect(&ca, separate.addr, H1_ONLY).await;
    assert_eq!(client.get("/targets").await.body, "main");
    assert_eq!(main.next().await.uri.path(), "/targets");
}

#[tokio::test]
async fn plain_http_and_silent_clients_on_the_tls_port_do_not_disturb_others() {
    let ca = Ca::new();
    let certs = CertDir::new(&ca.issue("proxy"));
    let main = MockBackend::start(Reply::ok("main")).await;
    // Long enough for the open connection below not to be idle-closed meanwhile.
    let proxy = tls_proxy(&certs, &main, &["--header-read-timeout", "1s"]).await;

    // A client already connected keeps working through all of this.
    let mut before = TlsClient::connect(&ca, proxy.addr, H2_AND_H1).await;
    assert_eq!(before.get("/before").await.status, StatusCode::OK);

    // Plain HTTP to the TLS port: the handshake fails and the connection is closed.
    let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer))
        .await
        .expect("the plain connection is closed in time");
    // At most a TLS alert comes back (or a reset), never an HTTP answer.
    assert!(
        read.is_err() || !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // A client that never starts its handshake, and one that stops half-way.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let mut half = TcpStream::connect(proxy.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();

    // While they hang, others are served: a new client and the one already open.
    let mut next = TlsClient::connect(&ca, proxy.addr, H1_ONLY).await;
    assert_eq!(next.get("/next").await.body, "main");
    assert_eq!(before.get("/still").await.body, "main");
    assert_eq!(main.count(), 3);

    // Both are closed once --header-read-timeout has passed.
    for (what, stream) in [("silent", &mut silent), ("half", &mut half)] {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the {what} client is closed in time"));
        assert!(matches!(read, Ok(0) | Err(_)), "{what}: {read:?}");
    }
}

#[tokio::test]
async fn replaced_certificate_files_serve_new_handshakes_and_open_connections_go_on() {
    let ca = Ca::new();
    let first = ca.issue("first");
    let mut certs = CertDir::new(&first);
    let main = MockBackend::start(Reply::ok("main")).await;
    let flags = certs.flags();
    let main_url = main.url();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["--main", &main_url]);
    let mut binary = Binary::start(&args).await;
    assert!(binary.banner[0].contains("(https)"), "{:?}", binary.banner);
    assert!(
        binary.banner[1].contains(&format!("https://{}/targets", binary.addr)),
        "{:?}",
        binary.banner
    );

    let mut open = TlsClient::connect(&ca, &binary.addr, H1_ONLY).await;
    assert_eq!(open.peer_cert, first.der);
    assert_eq!(open.get("/1").await.status, StatusCode::OK);

    // Rotated as cert-manager does: the new pair written aside, then renamed in.
    let second = ca.issue("second");
    certs.install(&second.cert_pem, &second.key_pem);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let fresh = TlsClient::connect(&ca, &binary.addr, H2_AND_H1).await;
        if fresh.peer_cert == second.der {
            break;
        }
        assert_eq!(fresh.peer_cert, first.der);
        assert!(
            tokio::time::Instant::now() < deadline,
            "new handshakes still present the first certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before the change goes on with its session.
    let got = open.get("/2").await;
    assert_eq!(
        (got.status, got.body),
        (StatusCode::OK, Bytes::from("main"))
    );

    // A pair whose key is not the certificate's is refused, logged, and the current
    // pair stays.
    let third = ca.issue("third");
    certs.install(&third.cert_pem, &second.key_pem);
    binary
        .wait_for_stderr("the mismatched pair refused", |err| {
            err.contains("TLS certificate refused") && err.contains("does not match")
        })
        .await;
    let mut after = TlsClient::connect(&ca, &binary.addr, H2_AND_H1).await;
    assert_eq!(after.peer_cert, second.der);
    assert_eq!(after.get("/3").await.status, StatusCode::OK);
    // Garbage too.
    certs.install("not a certificate\n", "not a key\n");
    binary
        .wait_for_stderr("the garbage pair refused", |err| {
            err.contains("holds no PEM certificate")
        })
        .await;
    let after = TlsClient::connect(&ca, &binary.addr, H1_ONLY).await;
    assert_eq!(after.peer_cert, second.der);
    assert_eq!(open.get("/4").await.status, StatusCode::OK);
}

/// Runs the binary (listening on 127.0.0.1:0) expecting a start-up error: exit status
/// 2, one line on stderr that contains every one of `wanted`.
fn start_up_error(sandbox: &Sandbox, args: &[&str], env: &[(&str, &str)], wanted: &[&str]) {
    let args = [&["--listen", "127.0.0.1:0"][..], args].concat();
    let (code, stdout, stderr, _) = run_in(sandbox, &args, env);
    assert_eq!(code, Some(2), "{args:?}: {stderr}");
    assert_eq!(stdout, "", "{args:?}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    for want in wanted {
        assert!(stderr.contains(want), "{args:?}: {want:?} not in {stderr}");
    }
}

#[test]
fn bad_tls_flags_and_files_are_one_line_start_up_errors() {
    let ca = Ca::new();
    let pair = ca.issue("proxy");
    let other = ca.issue("other");
    let sandbox = Sandbox::new();
    let cert = sandbox.write("work/tls.crt", &pair.cert_pem);
    let key = sandbox.write("work/tls.key", &pair.key_pem);
    let other_key = sandbox.write("work/other.key", &other.key_pem);
    let garbage = sandbox.write("work/garbage.pem", "hello, I am not PEM\n");
    let broken = sandbox.write(
        "work/broken.pem",
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    );
    let (cert, key, other_key, garbage, broken) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        other_key.to_str().unwrap(),
        garbage.to_str().unwrap(),
        broken.to_str().unwrap(),
    );
    start_up_error(
        &sandbox,
        &["--tls-cert", "tls.crt"],
        &[],
        &["--tls-key is missing"],
    );
    start_up_error(
        &sandbox,
        &[],
        &[("TRAFFICMIRROR_TLS_KEY", "tls.key")],
        &["--tls-cert is missing"],
    );
    start_up_error(
        &sandbox,
        &["--tls-cert", "absent.crt", "--tls-key", key],
        &[],
        &["--tls-cert", "absent.crt"],
    );
    start_up_error(
        &sandbox,
        &["--tls-cert", cert, "--tls-key", other_key],
        &[],
        &["does not match", other_key],
    );
    start_up_error(
        &sandbox,
        &["--tls-cert", garbage, "--tls-key", key],
        &[],
        &["holds no PEM certificate", garbage],
    );
    start_up_error(
        &sandbox,
        &["--tls-cert", broken, "--tls-key", key],
        &[],
        &["not valid PEM", broken],
    );
    start_up_error(
        &sandbox,
        &["--tls-cert", cert, "--tls-key", cert],
        &[],
        &["holds no PEM private key", cert],
    );
    // From the config file: the message names the file and its key.
    sandbox.write(
        "work/trafficmirror.yaml",
        &format!("tls-cert: {cert}\ntls-key: absent.key\n"),
    );
    start_up_error(
        &sandbox,
        &[],
        &[],
        &[
            "--tls-key",
            "absent.key",
            "trafficmirror.yaml",
            "\"tls-key\"",
        ],
    );
}

#[tokio::test]
async fn tls_flags_from_environment_and_go_style_flags() {
    let ca = Ca::new();
    let pair = ca.issue("env");
    let certs = CertDir::new(&pair);
    let main = MockBackend::start(Reply::ok("main")).await;
    let (cert, key) = (certs.cert(), certs.key());
    let mut binary = Binary::start_with(
        &[
            "-listen",
            "127.0.0.1:0",
            "-main",
            &main.url(),
            "-tls-cert",
            cert.to_str().unwrap(),
        ],
        &[("TRAFFICMIRROR_TLS_KEY", key.to_str().unwrap())],
    )
    .await;
    let mut client = TlsClient::connect(&ca, &binary.addr, H2_AND_H1).await;
    assert_eq!(client.peer_cert, pair.der);
    assert_eq!(client.get("/").await.body, "main");

    // Failed handshakes are logged, at most about once a second however many there are.
    for _ in 0..20 {
        let mut plain = TcpStream::connect(&binary.addr).await.unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut sink)).await;
    }
    binary
        .wait_for_stderr("a failed handshake logged", |err| {
            err.contains("TLS handshake failed")
        })
        .await;
    assert_eq!(client.get("/again").await.body, "main");
    let stderr = binary.terminate_within(WAIT).await;
    let lines = stderr.matches("TLS handshake failed").count();
    assert!(lines < 5, "{lines} lines for 20 failures:\n{stderr}");
}
