//! The integration test binary: real sockets on 127.0.0.1:0, real mock backends.

mod admin;
mod bodies;
mod cli;
mod compare;
mod faults;
mod health;
mod mirror;
mod protocol;
mod proxy;
mod shutdown;
mod support;
mod tls;
