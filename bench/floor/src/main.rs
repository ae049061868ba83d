//! The floor: the least work a proxy built on hyper 1.x and tokio can do per request,
//! to tell what part of a gap to nginx is trafficmirror's and what part is the stack's
//! (bench/README.md, "The hyper floor").
//!
//! Usage: `hyper-floor LISTEN MAIN [MIRROR...]` (socket addresses).
//!
//! Like trafficmirror, it runs one single-threaded tokio runtime per core (two here);
//! each has its own `SO_REUSEPORT` listener, so a connection never changes thread.
//! Everything a production proxy must do is left out: no header rewriting, no pool (each
//! client connection gets its own connection to main and to each mirror, opened once),
//! no bounds, no timeouts, no metrics, no error handling beyond closing. A request body
//! is read whole before anything is sent (cheaper than streaming it to main while
//! keeping a copy). Each mirror copy goes through a channel to one long-lived task per
//! (client connection, mirror) that owns that mirror's connection, so there is no task
//! spawned and no connection checked out per copy.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Mutex, mpsc};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Worker threads, each with its own runtime and listener.
const THREADS: usize = 2;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hyper-floor LISTEN MAIN [MIRROR...]";
    let listen: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let main: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let mirrors: Arc<[SocketAddr]> = args
        .map(|a| a.parse())
        .collect::<Result<Vec<_>, _>>()?
        .into();
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let mirrors = mirrors.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(accept(listen, main, mirrors))
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| "worker panicked")??;
    }
    Ok(())
}

async fn accept(
    listen: SocketAddr,
    main: SocketAddr,
    mirrors: Arc<[SocketAddr]>,
) -> Result<(), Error> {
    let socket = match listen {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseport(true)?;
    socket.bind(listen)?;
    let listener = socket.listen(1024)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let mirrors = mirrors.clone();
        tokio::spawn(async move {
            if let Err(err) = serve(stream, main, mirrors).await {
                eprintln!("connection: {err}");
            }
        });
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, Error> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One long-lived task per (client connection, mirror): sends each copy and reads its
/// answer, one at a time.
fn mirror_task(addr: SocketAddr) -> mpsc::UnboundedSender<Request<Full<Bytes>>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Request<Full<Bytes>>>();
    tokio::spawn(async move {
        let Ok(mut sender) = connect(addr).await else {
            return;
        };
        while let Some(copy) = rx.recv().await {
            if sender.ready().await.is_err() {
                return;
            }
            let Ok(answer) = sender.send_request(copy).await else {
                return;
            };
            if answer.into_body().collect().await.is_err() {
                return;
            }
        }
    });
    tx
}

async fn serve(
    stream: TcpStream,
    main: SocketAddr,
    mirrors: Arc<[SocketAddr]>,
) -> Result<(), Error> {
    stream.set_nodelay(true)?;
    let upstream = Arc::new(Mutex::new(connect(main).await?));
    let copies: Arc<[_]> = mirrors.iter().map(|&m| mirror_task(m)).collect();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (upstream, copies) = (upstream.clone(), copies.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            for tx in copies.iter() {
                let mut copy = Request::new(Full::new(body.clone()));
                *copy.method_mut() = parts.method.clone();
                *copy.uri_mut() = parts.uri.clone();
                *copy.headers_mut() = parts.headers.clone();
                let _ = tx.send(copy);
            }
            let answer = {
                let mut sender = upstream.lock().await;
                sender.ready().await?;
                sender.send_request(Request::from_parts(parts, Full::new(body)))
            };
            answer.await
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await?;
    Ok(())
}
