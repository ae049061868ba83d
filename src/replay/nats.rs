//! `trafficmirror replay nats://HOST:PORT/SUBJECT --durable NAME --to URL`
//! (docs/fleet.md): consumes a NATS mirror's stream with a durable pull consumer and
//! hands each message's request to the replay like a record read from a file.
//!
//! A message is acknowledged once the target answered its request (any status), and
//! negatively acknowledged with a backoff when the target could not be reached or did
//! not answer in time, so another replayer (or this one, later) tries it again.
//! Replayers with the same durable share the stream; a message whose replayer died is
//! delivered again once `--ack-wait` passed without its acknowledgement.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, message::Acker};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{EXIT_COULD_NOT_RUN, EXIT_USAGE, Item, Options, Sent, selected};
use crate::record::format::Reader;
use crate::target_url::{TargetUrl, Transport};

/// On SIGTERM or Ctrl-C, how long answers under way are waited for.
pub const STOP_GRACE: Duration = Duration::from_millis(500);

/// How long connecting to the NATS server may take before the replay gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The first redelivery delay after a failed send; doubled per delivery, at most
/// [`MAX_NAK_DELAY`].
const FIRST_NAK_DELAY: Duration = Duration::from_millis(200);
const MAX_NAK_DELAY: Duration = Duration::from_secs(30);

/// Resolves at SIGTERM or Ctrl-C.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// A message's acknowledgement, settled once its request was sent.
pub struct Ack {
    /// Boxed: it holds a client and a JetStream context, and an `Item` carries it.
    acker: Box<Acker>,
    /// Deliveries of this message so far, 1 for the first.
    delivered: i64,
}

impl Ack {
    /// Acknowledges the message when the target answered (any status); else asks for
    /// it again after a backoff growing with its deliveries.
    pub async fn settle(self, result: &Sent) {
        let outcome = match result {
            // Double: the server confirms, so an answered message is not replayed again
            // because an acknowledgement was lost on the way.
            Ok(Ok(_)) => self.acker.double_ack().await,
            _ => {
                self.acker
                    .ack_with(AckKind::Nak(Some(nak_delay(self.delivered))))
                    .await
            }
        };
        if let Err(err) = outcome {
            tracing::debug!(%err, "replay: cannot acknowledge a NATS message; it will be delivered again");
        }
    }

    /// Acknowledges a message that is not replayed (filtered out, or not a record), so
    /// it is not delivered again.
    async fn done(self) {
        if let Err(err) = self.acker.ack().await {
            tracing::debug!(%err, "replay: cannot acknowledge a NATS message");
        }
    }
}

/// The backoff before the `delivered`-th delivery's message is delivered again.
fn nak_delay(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    FIRST_NAK_DELAY
        .saturating_mul(1 << doublings)
        .min(MAX_NAK_DELAY)
}

/// A `nats://` source, connected, with its durable consumer.
pub struct Source {
    consumer: PullConsumer,
    subject: String,
}

impl Source {
    /// When the sources are one `nats://` or `tls://` URL: connects and finds or creates
    /// the durable consumer. `Ok(None)` for file sources.
    ///
    /// # Errors
    /// The exit status: usage (a bad URL, no `--durable`, `--loop`) or could not run
    /// (no server, no stream holding the subject).
    pub async fn open(
        options: &Options,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Option<Self>, u8> {
        let Some(first) = options.sources.first() else {
            return Ok(None);
        };
        if !crate::target_url::is_nats(first.trim()) {
            return Ok(None);
        }
        let url = match TargetUrl::parse(first) {
            Ok(url) if url.transport() == Transport::Nats => url,
            Ok(_) => return Err(usage("not a NATS URL")),
            Err(err) => return Err(usage(&err.to_string())),
        };
        if options.sources.len() > 1 {
            return Err(usage("a nats:// source is replayed alone"));
        }
        if options.repeat {
            return Err(usage("--loop does not apply to a nats:// source"));
        }
        let Some(durable) = &options.durable else {
            return Err(usage("a nats:// source needs --durable NAME"));
        };
        let consumer = consumer(&url, durable, options.ack_wait, tls)
            .await
            .map_err(|err| {
                // `url` shows no password.
                eprintln!("replay: {url}: {err}");
                EXIT_COULD_NOT_RUN
            })?;
        let subject = url.nats().map(|a| a.subject.to_owned()).unwrap_or_default();
        Ok(Some(Self { consumer, subject }))
    }

    /// Starts consuming; requests come on the channel until the replay stops, or with
    /// `--exit-when-idle` until no message came for that long.
    pub fn start(self, options: &Options) -> mpsc::Receiver<Item> {
        // A small channel: a message waiting here is not being replayed, and its
        // acknowledgement time runs.
        let (tx, rx) = mpsc::channel(options.concurrency.clamp(1, 1024));
        tokio::spawn(consume(self, options.clone(), tx));
        rx
    }
}

fn usage(message: &str) -> u8 {
    eprintln!("replay: {message}");
    EXIT_USAGE
}

/// Connects and gets (or creates) the durable pull consumer on the stream holding the
/// subject.
async fn consumer(
    url: &TargetUrl,
    durable: &str,
    ack_wait: Duration,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<PullConsumer, String> {
    let address = url.nats().ok_or("not a NATS URL")?;
    let connect = crate::nats::connect_options(url, Some(tls)).connect(address.server());
    let client = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| "cannot connect: timed out".to_owned())?
        .map_err(|err| format!("cannot connect: {err}"))?;
    let jetstream = jetstream::new(client);
    let name = jetstream
        .stream_by_subject(address.subject)
        .await
        .map_err(|err| format!("no JetStream stream holds the subject: {err}"))?;
    let stream = jetstream
        .get_stream(&name)
        .await
        .map_err(|err| format!("cannot read stream {name:?}: {err}"))?;
    let config = pull::Config {
        durable_name: Some(durable.to_owned()),
        // A new durable starts at the stream's first message.
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        filter_subject: address.subject.to_owned(),
        ..Default::default()
    };
    stream
        .get_or_create_consumer(durable, config)
        .await
        .map_err(|err| format!("cannot create durable consumer {durable:?}: {err}"))
}

/// Pulls messages and hands their requests over until the receiver goes, the stream
/// ends, or (with `--exit-when-idle`) none came for that long.
async fn consume(source: Source, options: Options, tx: mpsc::Sender<Item>) {
    let batch = options.concurrency.clamp(1, 1024);
    let messages = source
        .consumer
        .stream()
        .max_messages_per_batch(batch)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(2))
        .messages()
        .await;
    let mut messages = match messages {
        Ok(messages) => messages,
        Err(err) => {
            let _ = tx
                .send(Item::Skipped(format!(
                    "{}: cannot consume: {err}",
                    source.subject
                )))
                .await;
            return;
        }
    };
    loop {
        let idle = async {
            match options.exit_when_idle {
                Some(idle) => tokio::time::sleep(idle).await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            next = messages.next() => next,
            () = idle => break,
            () = tx.closed() => break,
        };
        match next {
            None => break,
            // A missed heartbeat or a reconnection: the client carries on.
            Some(Err(err)) => tracing::debug!(%err, "replay: NATS consumer"),
            Some(Ok(message)) => {
                if !hand_over(message, &source.subject, &options, &tx).await {
                    break;
                }
            }
        }
    }
}

/// Hands one message's request over; false when the receiver is gone.
async fn hand_over(
    message: jetstream::Message,
    subject: &str,
    options: &Options,
    tx: &mpsc::Sender<Item>,
) -> bool {
    let delivered = message.info().map_or(1, |info| info.delivered);
    let (message, acker) = message.split();
    let ack = Ack {
        acker: Box::new(acker),
        delivered,
    };
    let mut source = super::Source {
        name: format!("{subject} message"),
        reader: Reader::new(Box::new(Cursor::new(message.payload))),
        head: None,
        ahead: std::collections::VecDeque::new(),
        ahead_bytes: 0,
        answers: options.compare,
    };
    let mut skipped = Vec::new();
    source.advance(&mut |line| {
        skipped.push(line);
        true
    });
    for line in skipped {
        if tx.send(Item::Skipped(line)).await.is_err() {
            return false;
        }
    }
    match source.head.take() {
        Some((timestamp_ns, request, recorded)) if selected(options, &request) => tx
            .send(Item::Request {
                round: 0,
                timestamp_ns,
                request: Box::new(request),
                recorded: recorded.map(Box::new),
                ack: Some(ack),
            })
            .await
            .is_ok(),
        // Left out by a filter, or holding no request: not for any replayer.
        _ => {
            ack.done().await;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_message_comes_back_later_each_time_up_to_a_bound() {
        assert_eq!(nak_delay(1), Duration::from_millis(200));
        assert_eq!(nak_delay(2), Duration::from_millis(400));
        assert_eq!(nak_delay(4), Duration::from_millis(1600));
        assert_eq!(nak_delay(50), MAX_NAK_DELAY);
        assert_eq!(nak_delay(i64::MAX), MAX_NAK_DELAY);
        assert_eq!(nak_delay(-3), FIRST_NAK_DELAY);
    }
}
