//! trafficmirror: an HTTP reverse proxy that forwards every request to a main target and
//! streams main's answer back, while replaying a copy of each request to a run-time set
//! of mirror targets. Mirroring never slows down, changes or breaks the main exchange.
//!
//! The behaviour is documented for users in README.md and docs/; code comments point there
//! (by file and section name) or to the RFC they follow.
//!
//! # Layout
//! A module with parts is `x.rs` and the parts are in `x/` (`mirror.rs`, `mirror/`).
//! - `cli`: raw flags (clap, `TRAFFICMIRROR_*` env vars, Go-style `-flag`) and the
//!   subcommands (`demo`, `replay`, `verdict`, `completions`, `man`); `cli::file`: the
//!   YAML config file; `cli::verdict`: `trafficmirror verdict`, asking a running proxy.
//! - `config`: validated [`Config`] built from the flags, split by the part that uses
//!   it (`server::Settings`, `proxy::Settings` with the mirrors' `mirror::Settings`,
//!   `admin::Settings`, and `config::Initial`: the mirrors and files loaded at start);
//!   start-up errors.
//! - `app`: start-up wiring: builds the byte budget, the mirror registry (seeded from
//!   `--mirror`, the state file and the targets file), the proxy, the metrics and the
//!   admin endpoint, hands each its settings, starts the background tasks (pruning
//!   expired mirrors, saving the state file, watching the targets file, following the
//!   listener's certificate), then [`run`] hands it all to `server`.
//! - `units`: duration (`1` = a minute, `500ms`) and size (`10MiB`) parsing.
//! - `server`: binds (`server::ListenAddr`), accepts, serves HTTP/1 + h2c connections
//!   (or TLS with ALPN), routes, drains.
//! - `idle`: closes idle client connections where hyper does not.
//! - `proxy`: owns the proxy's state; answers each request in named steps (rewrite the
//!   head, offer the copy, send to main, build the answer); `proxy::offer`: which
//!   mirrors a request's copy goes to, the head it carries and what main's answer owes
//!   them; `proxy::tee` streams a request body to main while copying it for the
//!   mirrors; `proxy::error`: `MainError`, the proxy's own answers (`400`, `408`, `501`,
//!   `502`, `504`, or Trailers-Only gRPC answers to gRPC calls).
//! - `budget`: the byte budget for bodies held for mirrors (`--max-buffered-bytes`).
//! - `headers`: hop-by-hop removal, `X-Forwarded-*`, `Via`.
//! - `body`: body types and helpers for the proxy's own answers.
//! - `mirror`: one `Mirror` per target: bounded queue and delivery. Its parts:
//!   `mirror::health` (the health state machine), `mirror::options` (options and mirror
//!   lines), `mirror::select` (which requests a mirror gets), `mirror::ordered` (ordered
//!   replay), `mirror::counters` (per-mirror counters, for the JSON listing and the
//!   scrape), `mirror::retry` (`retry=N`: which failed copies are tried again, and
//!   when), `mirror::grpc` (a gRPC copy's deadline), `mirror::lane` (the long-lived
//!   task per mirror and worker that delivers its copies) and `mirror::compare`,
//!   comparing its answers with main's: `compare::verdict` decides whether two answers
//!   match and names every differing field, `compare::grpc` the gRPC rules (status,
//!   messages, descriptor sets), `compare::capture` keeps answers aside within the byte
//!   budget, `compare::decode` undoes a `Content-Encoding`, `compare::stats`,
//!   `compare::mismatches` and `compare::endpoints` (per endpoint, with the baseline's
//!   noise rule) keep the results, `compare::decision` turns them into a verdict.
//! - `record`: recording mirrors (`file:///PATH`): `record::format` (GoReplay's records,
//!   written and read), `record::path` (time patterns and rotation names),
//!   `record::writer` (the writing thread, rotation, gzip, caps).
//! - `replay`: `trafficmirror replay`, sending recordings to a target.
//! - `sources`: mirror lines on disk: `sources::state_file` (`--state-file`, and its
//!   `Saver`, which writes the registry's admin mirrors after each change) and
//!   `sources::targets_file` (`--targets-file`).
//! - `registry`: the set of mirrors; removes mirrors that failed for too long.
//! - `admin`: the `/targets` endpoint; `auth`: its Basic authentication.
//! - `observe`: what the proxy shows about itself: `observe::metrics`, the Prometheus
//!   scrape (requests by status class, latency histograms, the per-mirror counters, the
//!   byte budget), and `observe::page`, the status page a browser gets at the admin path;
//!   `observe::build_info`, which build this is (version, commit, date, from `build.rs`).
//! - `target_url`: URL validation, normalisation and path-prefix joining.
//! - `shutdown`: SIGINT/SIGTERM. `ratelimit`: at most one log line per second for
//!   per-request and accept errors.
//! - `client`: keep-alive connection pools to main and mirrors, one per worker;
//!   `client::h2`: HTTP/2 connections multiplexed within the server's stream limit;
//!   `client::raw`: copies to `http://` mirrors that need only the answer's status,
//!   written and read without hyper's client (`client::pool_comparison`, test-only:
//!   the load harness of `bench/pool-compare`);
//!   `tls`: TLS settings for https targets; `tls::listener`: TLS on the listener and
//!   its certificate files, followed as they are renewed.
//! - `workers`: thread-per-core worker runtimes that own the connections.
//! - `demo`: `trafficmirror demo`, the product with demo backends in one process.
//! - `fuzz` (with `--cfg fuzzing`, and in tests): entry points for the `cargo fuzz` targets.
//!
//! # Start-up
//! `main` parses the flags into a [`Config`], binds the [`Listeners`] and calls [`run`]:
//! `app` builds the parts from the configuration, `server` serves them until shutdown
//! and then drains.
//!
//! # Request flow
//! 1. `server` accepts a connection and hands it to the least loaded of the `workers`;
//!    on that thread each request is routed to `admin` or `proxy`.
//! 2. `proxy` rewrites the head once (`Proxy::rewrite_head`), picks the mirrors whose
//!    options want the request (`Proxy::offer_copy`) and sends it to main
//!    (`Proxy::send_to_main`), its body streamed as it arrives; when mirrors want the
//!    request a copy of the body is collected on the way (`proxy::tee`), within
//!    `--max-body-size` and the byte budget.
//! 3. Once the body is complete each mirror is *offered* an `Arc` of the copy
//!    (`proxy::offer`): a non-blocking permit + health check, then the mirror's
//!    delivery lane on this worker (`mirror::lane`) delivers it in the background.
//! 4. main's response is streamed back as it arrives (`Proxy::build_answer`); for
//!    comparing mirrors a copy of its start is kept aside
//!    (`mirror::compare::capture`), and each comparing copy compares once both are
//!    complete (`mirror::compare::verdict`). When main cannot answer, a `MainError`
//!    says why and is the client's answer.

#![forbid(unsafe_code)]

mod admin;
mod app;
mod auth;
mod body;
mod budget;
pub mod cli;
mod client;
pub mod config;
mod demo;
#[cfg(any(fuzzing, test))]
pub mod fuzz;
mod headers;
mod idle;
mod mirror;
mod nats;
mod observe;
mod proxy;
mod ratelimit;
mod record;
mod registry;
pub mod replay;
mod server;
pub mod shutdown;
mod sources;
mod target_url;
mod tls;
mod units;
mod workers;

pub use app::run;
pub use config::Config;
pub use demo::demo;
pub use observe::build_info;
pub use server::{BindError, Listeners};
