//! NATS JetStream mirrors (docs/fleet.md): a mirror whose URL is
//! `nats://[USER:PASS@]HOST:PORT/SUBJECT` (or `tls://…`) publishes each copy as one
//! message holding its records in the recording format (docs/record-replay.md), with
//! `Nats-Msg-Id` set to the record id so that a publish tried again within the stream's
//! duplicate window is stored once. A copy counts `succeeded` once the server
//! acknowledged it.
//!
//! The client connects at the first copy and then reconnects by itself; while it is not
//! connected a copy fails at once (it never left this process), so the mirror turns
//! failing as for an HTTP mirror that refuses connections, and `retry`/`spill` apply.
//! Copies being published are bounded in number by the mirror's queue and in bytes by
//! [`MAX_BYTES_IN_FLIGHT`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use tokio::sync::{OnceCell, Semaphore};
use tracing::{info, warn};

use crate::mirror::{MirrorRequest, Plan};
use crate::target_url::TargetUrl;

/// Bytes of one mirror's copies being published at once; a copy waits (within its
/// `--mirror-timeout`) for room.
pub const MAX_BYTES_IN_FLIGHT: usize = 64 << 20;

/// Room left in a message for its headers (`Nats-Msg-Id` and the protocol's framing),
/// when checking a copy against the server's `max_payload`.
const HEADER_ALLOWANCE: usize = 128;

/// The server's `max_payload` before it has told it (its default, 1 MiB).
const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// Why a copy was not published.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// Larger than the server's `max_payload`: the copy is `skipped`, not `failed`.
    #[error("the copy ({size} bytes) is larger than the NATS server's max_payload ({max} bytes)")]
    TooLarge { size: usize, max: usize },
    #[error("not connected to the NATS server")]
    NotConnected,
    #[error("cannot connect to the NATS server: {0}")]
    Connect(String),
    #[error("the publish was not acknowledged: {0}")]
    Publish(String),
    #[error("cannot create or find JetStream stream {stream:?}: {reason}")]
    Stream { stream: String, reason: String },
}

/// True when `err` is a copy too large for the server: counted `skipped`.
pub fn is_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        err.downcast_ref::<NatsError>(),
        Some(NatsError::TooLarge { .. })
    )
}

/// True when `err` came from publishing to NATS: such a copy is tried again (with
/// `retry=N`) by [`Publisher::publish`] itself, with the same message id.
pub fn is_publish_error(err: &(dyn std::error::Error + 'static)) -> bool {
    err.downcast_ref::<NatsError>().is_some()
}

/// A connection to a NATS server: the client and its JetStream context.
struct Connected {
    client: async_nats::Client,
    jetstream: jetstream::Context,
}

/// The connect options for `url`: its credentials, TLS for `tls://`, reconnecting for
/// ever in the background.
pub fn connect_options(
    url: &TargetUrl,
    tls: Option<&rustls::ClientConfig>,
) -> async_nats::ConnectOptions {
    let mut options = async_nats::ConnectOptions::new()
        .name("trafficmirror")
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2));
    if let Some(address) = url.nats() {
        match address.credentials {
            Some((user, Some(password))) => {
                options = options.user_and_password(user.clone(), password.clone());
            }
            Some((token, None)) => options = options.token(token.clone()),
            None => {}
        }
        if address.tls {
            options = options.require_tls(true);
            if let Some(tls) = tls {
                let mut config = tls.clone();
                // A NATS server speaks no ALPN; an https:// mirror's offer would not fit.
                config.alpn_protocols.clear();
                options = options.tls_client_config(config);
            }
        }
    }
    options
}

/// The publishing side of a `nats://` mirror.
pub struct Publisher {
    url: TargetUrl,
    tls: Arc<rustls::ClientConfig>,
    connected: OnceCell<Connected>,
    /// The `stream=` name already found or created on the current server.
    stream_ready: std::sync::Mutex<Option<String>>,
    bytes: Arc<Semaphore>,
    too_large_logged: AtomicBool,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("url", &self.url).finish()
    }
}

impl Publisher {
    /// The publisher of a NATS mirror; it connects at its first copy.
    pub fn new(url: &TargetUrl, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            url: url.clone(),
            tls,
            connected: OnceCell::new(),
            stream_ready: std::sync::Mutex::new(None),
            bytes: Arc::new(Semaphore::new(MAX_BYTES_IN_FLIGHT)),
            too_large_logged: AtomicBool::new(false),
        }
    }

    /// Publishes one copy and waits for the server's acknowledgement; with `retry=N`
    /// a failed publish is tried again with the same message id (the stream stores it
    /// once), calling `retried` before each further try.
    ///
    /// # Errors
    /// [`NatsError::TooLarge`] (skipped), else why it was not acknowledged.
    pub async fn publish(
        &self,
        request: &MirrorRequest,
        plan: &Plan,
        taken: SystemTime,
        answer_wait: Duration,
        retried: impl FnMut(),
    ) -> Result<(), NatsError> {
        let connected = self.connection().await?;
        let (id, records) = crate::record::encode_copy(request, plan, taken, answer_wait).await;
        let max = match connected.client.server_info().max_payload {
            0 => DEFAULT_MAX_PAYLOAD,
            max => max,
        };
        let size = records.len() + HEADER_ALLOWANCE;
        if size > max {
            if !self.too_large_logged.swap(true, Ordering::Relaxed) {
                warn!(mirror = %self.url, size, max, "copy larger than the NATS server's max_payload: skipped (logged once)");
            }
            return Err(NatsError::TooLarge { size, max });
        }
        // Bounded in bytes: a copy waits here for room (the caller's timeout applies).
        let want = u32::try_from(records.len().clamp(1, MAX_BYTES_IN_FLIGHT)).unwrap_or(u32::MAX);
        let _room = self
            .bytes
            .acquire_many(want)
            .await
            .map_err(|_| NatsError::NotConnected)?;
        let payload = Bytes::from(records);
        crate::mirror::retry::with_retries(
            plan.options.retry,
            || self.publish_once(connected, plan, &id, payload.clone()),
            Result::is_err,
            retried,
        )
        .await
    }

    async fn connection(&self) -> Result<&Connected, NatsError> {
        self.connected
            .get_or_try_init(|| async {
                let Some(address) = self.url.nats() else {
                    return Err(NatsError::Connect("not a NATS URL".into()));
                };
                // Until a first connection succeeds each copy tries one (a refused one
                // fails fast); from then on the client reconnects by itself.
                let client = connect_options(&self.url, Some(&self.tls))
                    .connect(address.server())
                    .await
                    .map_err(|err| NatsError::Connect(err.to_string()))?;
                let jetstream = jetstream::new(client.clone());
                Ok(Connected { client, jetstream })
            })
            .await
    }

    async fn publish_once(
        &self,
        connected: &Connected,
        plan: &Plan,
        id: &str,
        payload: Bytes,
    ) -> Result<(), NatsError> {
        if connected.client.connection_state() != async_nats::connection::State::Connected {
            // Not handed to the client: it would send it after reconnecting, after
            // this copy was counted failed.
            return Err(NatsError::NotConnected);
        }
        let Some(address) = self.url.nats() else {
            return Err(NatsError::NotConnected);
        };
        if let Some(stream) = &plan.options.stream {
            self.ensure_stream(connected, stream, address.subject)
                .await?;
        }
        let publish = PublishMessage::build().payload(payload).message_id(id);
        let acked = match connected
            .jetstream
            .send_publish(address.subject.to_owned(), publish)
            .await
        {
            Ok(ack) => ack.await.map(drop).map_err(|err| err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        if acked.is_err() {
            // The stream may be gone (a server started afresh): look again next time.
            *lock(&self.stream_ready) = None;
        }
        acked.map_err(NatsError::Publish)
    }

    /// Finds the `stream=` stream, or creates it holding the mirror's subject.
    async fn ensure_stream(
        &self,
        connected: &Connected,
        stream: &str,
        subject: &str,
    ) -> Result<(), NatsError> {
        if lock(&self.stream_ready).as_deref() == Some(stream) {
            return Ok(());
        }
        let config = jetstream::stream::Config {
            name: stream.to_owned(),
            subjects: vec![subject.to_owned()],
            ..Default::default()
        };
        match connected.jetstream.get_or_create_stream(config).await {
            Ok(_) => {
                info!(mirror = %self.url, stream, "JetStream stream ready");
                *lock(&self.stream_ready) = Some(stream.to_owned());
                Ok(())
            }
            Err(err) => Err(NatsError::Stream {
                stream: stream.to_owned(),
                reason: err.to_string(),
            }),
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only a plain value is set under this lock.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
