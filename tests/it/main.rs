//! The integration test binary: real sockets on 127.0.0.1:0, real mock backends.

mod admin;
mod analysis;
mod bodies;
mod cli;
mod compare;
mod demo;
mod faults;
mod framing;
mod grpc;
mod grpc_compare;
mod grpc_mirror;
mod h2_targets;
mod health;
mod limits;
mod metrics;
mod mirror;
mod options;
mod page;
mod protocol;
mod proxy;
mod record;
mod retry;
mod shutdown;
mod support;
mod tls;
mod tls_listener;
