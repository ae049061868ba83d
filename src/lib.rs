//! trafficmirror: an HTTP reverse proxy that forwards every request to a main target and
//! streams main's answer back, while replaying a copy of each request to a run-time set
//! of mirror targets. Mirroring never slows down, changes or breaks the main exchange.
//!
//! # Layout
//! - [`cli`]: raw flags (clap, `TRAFFICMIRROR_*` env vars, Go-style `-flag`).
//! - [`config`]: validated [`Config`] built from the flags; start-up errors.
//! - [`units`]: duration (`1` = a minute, `500ms`) and size (`10MiB`) parsing.
//! - [`server`]: listeners, accept loops, HTTP/1 + h2c connections, routing, drain.
//! - [`proxy`]: forwarding to main; hands each request's copy to the mirrors.
//! - [`headers`]: hop-by-hop removal, `X-Forwarded-*`, `Via`.
//! - [`body`]: body types; reading a request body once for all copies.
//! - [`mirror`]: one [`mirror::Mirror`] per target: bounded queue, delivery, health
//!   ([`mirror::health`]); per-mirror options and mirror lines ([`mirror::options`]);
//!   which requests a mirror gets ([`mirror::select`]).
//! - [`sources`]: the `--state-file` and `--targets-file` (mirror lines on disk).
//! - [`registry`]: the set of mirrors.
//! - [`admin`]: the `/targets` endpoint; [`auth`]: its Basic authentication.
//! - [`target_url`]: URL validation, normalisation and path-prefix joining.
//! - [`metrics`]: per-mirror counters. [`shutdown`]: SIGINT/SIGTERM. [`ratelimit`]:
//!   at most one log line per second for per-request errors.
//! - [`client`]: keep-alive connection pools to main and mirrors, one per worker;
//!   [`tls`]: TLS settings for https targets.
//! - [`workers`]: thread-per-core worker runtimes that own the connections.
//!
//! # Request flow
//! 1. [`server`] accepts a connection and hands it to the least loaded of the
//!    [`workers`]; on that thread each request is routed to [`admin`] or [`proxy`].
//! 2. [`proxy`] rewrites the headers once; if any mirror may get a copy it reads the body
//!    (up to `--max-body-size`) into one `Bytes`.
//! 3. Each mirror is *offered* an `Arc` of the copy: a non-blocking permit + health check,
//!    then a background task delivers it.
//! 4. The request goes to main; main's response is streamed back as it arrives.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod body;
pub mod cli;
pub mod client;
pub mod config;
pub mod headers;
pub mod metrics;
pub mod mirror;
pub mod proxy;
pub mod ratelimit;
pub mod registry;
pub mod server;
pub mod shutdown;
pub mod sources;
pub mod target_url;
pub mod tls;
pub mod units;
pub mod workers;

pub use config::Config;
pub use server::{Listeners, run};
