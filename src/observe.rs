//! What the proxy shows about itself beyond the admin listing: the Prometheus scrape
//! ([`metrics`]) and the status page served at the admin path to browsers ([`page`]).
//! The counters they read are owned where they are counted (the proxy, each mirror,
//! the byte budget); which build is running is [`build_info`]. The page uses the same
//! JSON and `PUT`/`DELETE` as curl users, so there is no second API. Routing and
//! authentication stay in `admin`.

pub mod build_info;
pub mod metrics;
pub mod page;
pub mod report;
