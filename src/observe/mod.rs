//! What the proxy shows about itself to people: the status page served at the admin
//! path to browsers ([`page`]).
//!
//! The page reads the same JSON and uses the same `PUT`/`DELETE` as curl users; this
//! module adds no second API. Routing and authentication stay in `admin`.

pub mod page;
