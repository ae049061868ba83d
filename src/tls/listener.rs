//! TLS on the listener (`--tls-cert`, `--tls-key`; docs/security.md, "TLS on the
//! listener"): rustls with ALPN `h2` and `http/1.1`, and a certificate that follows its
//! files.
//!
//! # Following the files
//! cert-manager and certbot renew a certificate by writing new files and swapping them
//! in by rename or symlink, which an inode watch misses (see
//! [`crate::sources::targets_file`], "Why polling the content"). So, as for the targets
//! file, both files are read through their paths every poll interval; when their bytes
//! change, the pair is loaded and, if it is valid, it serves every handshake from then
//! on. Connections already open keep the session they negotiated. A pair that does not
//! load (a half-written renewal, a key that does not match) is logged and the current
//! pair stays; it is tried again as soon as either file changes again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Largest certificate or key file read: a chain is a few KiB; a path pointed at a
/// device or a huge file must not eat memory.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why a certificate/key pair cannot be used. Display is the one-line start-up message
/// (and the reason logged when a changed pair is refused).
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("--tls-cert and --tls-key go together: --{missing} is missing")]
    Half { missing: &'static str },
    #[error("cannot read --{flag} file {path}: {message}")]
    Read {
        flag: &'static str,
        path: String,
        message: String,
    },
    #[error("--{flag} file {path} is not valid PEM: {message}")]
    Pem {
        flag: &'static str,
        path: String,
        message: String,
    },
    #[error("--tls-cert file {path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("--tls-key file {path} holds no PEM private key")]
    NoKey { path: String },
    #[error("--tls-key file {path}: unusable private key: {message}")]
    BadKey { path: String, message: String },
    #[error("--tls-key file {key} does not match the certificate in {cert}: {message}")]
    Mismatch {
        cert: String,
        key: String,
        message: String,
    },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

impl CertError {
    /// The flag whose value is at fault, so a value from the config file can be traced
    /// to its key.
    pub fn flag(&self) -> &'static str {
        match self {
            Self::Half { missing } if *missing == "tls-cert" => "tls-key",
            Self::Half { .. }
            | Self::NoCertificate { .. }
            | Self::Mismatch { .. }
            | Self::Rustls(_) => "tls-cert",
            Self::Read { flag, .. } | Self::Pem { flag, .. } => flag,
            Self::NoKey { .. } | Self::BadKey { .. } => "tls-key",
        }
    }
}

/// `--tls-cert` and `--tls-key`: the server's TLS settings and the pair they present.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The settings of every handshake; they take the pair from `current`.
    pub config: Arc<ServerConfig>,
    current: Arc<CurrentCert>,
    /// The files' bytes as loaded at start-up, so the first poll does not load them
    /// again.
    initial: (Vec<u8>, Vec<u8>),
}

impl ListenerTls {
    /// Reads and checks the pair once; `None` without either flag.
    ///
    /// # Errors
    /// One flag without the other, an unreadable file, no certificate or key in it, a
    /// key that cannot sign or does not match the certificate.
    pub fn from_flags(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Self>, CertError> {
        let (cert_path, key_path) = match (cert, key) {
            (None, None) => return Ok(None),
            (Some(_), None) => return Err(CertError::Half { missing: "tls-key" }),
            (None, Some(_)) => {
                return Err(CertError::Half {
                    missing: "tls-cert",
                });
            }
            (Some(c), Some(k)) => (c.to_owned(), k.to_owned()),
        };
        let (cert_pem, key_pem) = read_pair(&cert_path, &key_path)?;
        let pair = load(&cert_path, &cert_pem, &key_path, &key_pem)?;
        let current = Arc::new(CurrentCert(RwLock::new(pair)));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // RFC 7301: the client picks; one that offers no ALPN speaks HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Self {
            cert_path,
            key_path,
            config: Arc::new(config),
            current,
            initial: (cert_pem, key_pem),
        }))
    }

    /// Reads both files every `interval` until `stop` is cancelled, and installs a
    /// changed pair for new handshakes once it loads (see the module doc).
    pub async fn follow(self, interval: Duration, stop: CancellationToken) {
        let mut last = self.initial;
        let mut read_error: Option<String> = None;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let (cert_path, key_path) = (self.cert_path.clone(), self.key_path.clone());
            // Blocking file I/O and key parsing: keep them off the async worker.
            let read = tokio::task::spawn_blocking(move || read_pair(&cert_path, &key_path));
            let Ok(read) = read.await else { continue };
            let pems = match read {
                Ok(pems) => pems,
                Err(err) => {
                    // A renewal in progress can remove a file for a moment; log a lasting
                    // problem once.
                    let shown = err.to_string();
                    if read_error.as_deref() != Some(shown.as_str()) {
                        warn!(error = %shown, "TLS certificate unreadable; keeping the current one");
                        read_error = Some(shown);
                    }
                    continue;
                }
            };
            read_error = None;
            if pems == last {
                continue;
            }
            let (cert_path, key_path) = (self.cert_path.clone(), self.key_path.clone());
            let (cert_pem, key_pem) = pems.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                load(&cert_path, &cert_pem, &key_path, &key_pem)
            });
            let Ok(loaded) = loaded.await else { continue };
            // Remembered either way: a refused pair is logged once, and tried again as
            // soon as either file changes.
            last = pems;
            match loaded {
                Ok(pair) => {
                    self.current.replace(pair);
                    info!(cert = %self.cert_path.display(), key = %self.key_path.display(), "TLS certificate reloaded");
                }
                Err(err) => {
                    warn!(error = %err, "TLS certificate refused; keeping the current one");
                }
            }
        }
    }
}

/// The certificate every new handshake presents.
#[derive(Debug)]
pub struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl CurrentCert {
    fn replace(&self, pair: Arc<CertifiedKey>) {
        // A panic elsewhere cannot leave an `Arc` half-written: the value is still good.
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = pair;
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    Ok((read(cert, "tls-cert")?, read(key, "tls-key")?))
}

fn read(path: &Path, flag: &'static str) -> Result<Vec<u8>, CertError> {
    use std::io::Read as _;
    let err = |message: String| CertError::Read {
        flag,
        path: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(err(format!("larger than {MAX_PEM_BYTES} bytes")));
    }
    Ok(bytes)
}

/// The pair from the files' bytes: the certificate chain (leaf first, as in
/// fullchain.pem), and the first private key (PKCS#8, PKCS#1 or SEC1), which must be the
/// leaf's.
fn load(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, CertError> {
    let cert_shown = || cert_path.display().to_string();
    let key_shown = || key_path.display().to_string();
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            flag: "tls-cert",
            path: cert_shown(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate { path: cert_shown() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CertError::NoKey { path: key_shown() },
        e => CertError::Pem {
            flag: "tls-key",
            path: key_shown(),
            message: e.to_string(),
        },
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::BadKey {
            path: key_shown(),
            message: e.to_string(),
        })?;
    let pair = CertifiedKey::new(chain, signing);
    match pair.keys_match() {
        // ring can always tell; `Unknown` is accepted as rustls' own `from_der` does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(pair))
        }
        Err(e) => Err(CertError::Mismatch {
            cert: cert_shown(),
            key: key_shown(),
            message: e.to_string(),
        }),
    }
}
