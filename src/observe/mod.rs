//! What the proxy shows about itself beyond the admin listing: the Prometheus scrape
//! ([`metrics`]). The counters it reads are owned where they are counted (the proxy,
//! each mirror, the byte budget); this folder only records timings and exports.

pub mod metrics;
