//! The mirrors' offer of a request: which mirrors of the set its copy goes to
//! ([`Selection`], chosen by [`select`] from each mirror's options), and the head every
//! copy carries ([`Offer`]), handed to those mirrors once the body is complete
//! ([`super::tee`] collects it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method};

use crate::budget::Held;
use crate::mirror::compare::capture::{MainAnswerRx, MainAnswerTx};
use crate::mirror::grpc::Deadline;
use crate::mirror::ordered::{MainHalf, MirrorHalf};
use crate::mirror::{Member, MirrorRequest};
use crate::registry::Mirrors;
use crate::target_url::Transport;

/// Which members of a mirror list a request goes to. No allocation for the first 64.
#[derive(Debug, Default)]
pub struct Selection {
    mask: u64,
    more: Vec<usize>,
}

impl Selection {
    pub fn add(&mut self, index: usize) {
        match u32::try_from(index) {
            Ok(i) if i < 64 => self.mask |= 1 << i,
            _ => self.more.push(index),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.mask == 0 && self.more.is_empty()
    }

    /// The selected members of `mirrors`, in order.
    pub fn iter<'a>(&'a self, mirrors: &'a Mirrors) -> impl Iterator<Item = (usize, &'a Member)> {
        mirrors
            .iter()
            .enumerate()
            .take(64)
            .filter(|(i, _)| self.mask & (1 << i) != 0)
            .chain(self.more.iter().filter_map(|&i| Some((i, mirrors.get(i)?))))
    }
}

/// The request head as every mirror copy carries it, and the mirrors that want it.
pub struct Offer {
    pub mirrors: Mirrors,
    pub selected: Selection,
    /// For ordered mirrors (by index): the copies each must follow.
    pub orders: Vec<(usize, MirrorHalf)>,
    pub method: Method,
    pub path_and_query: Option<PathAndQuery>,
    pub headers: HeaderMap,
    /// `headers` holds an empty `Host` for each copy to fill (see [`MirrorRequest`]).
    pub host_slot: bool,
    /// Main's answer, for comparing mirrors.
    pub main_answer: Option<MainAnswerRx>,
    /// A gRPC call's `grpc-timeout`, which each copy gets what is left of.
    pub deadline: Option<Deadline>,
    /// For a gRPC call: set when main's answer has ended. A request stream finished
    /// after that is not mirrored: the call was over for main before the client was done.
    pub main_ended: Option<Arc<AtomicBool>>,
    /// When the request arrived, for recording mirrors.
    pub arrived: Option<std::time::SystemTime>,
}

impl Offer {
    /// The offer of a request whose head is rewritten (`parts`) to the `selected`
    /// members of `mirrors`, each copy waiting as `awaiting` says; `grpc`: the request
    /// is a gRPC call. `host_slot`: the `Host` in `parts`, if any, is a slot each copy
    /// fills with its mirror's authority (not a `Host` kept for every target).
    pub fn new(
        mirrors: Mirrors,
        selected: Selection,
        awaiting: Awaiting,
        parts: &http::request::Parts,
        grpc: bool,
        host_slot: bool,
    ) -> Self {
        let mut headers = parts.headers.clone();
        // A slot each copy fills with its mirror's authority in place, so that the
        // per-copy clone of this map never grows (a reallocation per copy).
        if host_slot && !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, HeaderValue::from_static(""));
        }
        Offer {
            mirrors,
            selected,
            orders: awaiting.orders,
            method: parts.method.clone(),
            path_and_query: parts.uri.path_and_query().cloned(),
            headers,
            host_slot,
            main_answer: awaiting.main_answer,
            deadline: if grpc {
                Deadline::of(&parts.headers)
            } else {
                None
            },
            main_ended: awaiting.main_ended,
            arrived: awaiting.arrived,
        }
    }

    /// Hands the finished copy to every selected mirror (never waits); skips them
    /// instead for a gRPC call whose answer from main had already ended.
    pub fn deliver(mut self, body: Bytes, held: Held) {
        if self
            .main_ended
            .as_ref()
            .is_some_and(|ended| ended.load(Ordering::Acquire))
        {
            self.skip();
            return;
        }
        let request = Arc::new(MirrorRequest {
            method: self.method,
            path_and_query: self.path_and_query,
            headers: self.headers,
            host_slot: self.host_slot,
            body,
            _held: held,
            main_answer: self.main_answer,
            deadline: self.deadline,
            arrived: self.arrived,
            endpoint_key: std::sync::OnceLock::new(),
            raw_head: std::sync::OnceLock::new(),
        });
        for (index, member) in self.selected.iter(&self.mirrors) {
            let order = self
                .orders
                .iter()
                .position(|(i, _)| *i == index)
                .map(|at| self.orders.swap_remove(at).1);
            member.mirror.offer(&request, &member.plan, order);
        }
    }

    pub fn skip(&self) {
        for (_, member) in self.selected.iter(&self.mirrors) {
            member.mirror.skip();
        }
    }

    pub fn drop_copies(&self) {
        for (_, member) in self.selected.iter(&self.mirrors) {
            member.mirror.drop_copy();
        }
    }
}

/// The mirrors whose options select this request; the others count it `filtered`.
/// A gRPC call (`grpc`) selected by a mirror spoken to in HTTP/1.1, which cannot carry
/// it, is counted `skipped` there instead.
pub fn select(
    mirrors: &Mirrors,
    method: &Method,
    path: &str,
    headers: &http::HeaderMap,
    grpc: bool,
) -> Selection {
    let mut selected = Selection::default();
    // One draw for all mirrors: equal `percent`s select the same requests, a smaller
    // one a subset of a larger one's.
    let roll = fastrand::f64();
    for (index, member) in mirrors.iter().enumerate() {
        if !member.plan.selects(method, path, headers, roll) {
            member.mirror.filter();
        } else if grpc && !member.mirror.carries_grpc() {
            member.mirror.skip_grpc();
        } else {
            selected.add(index);
        }
    }
    selected
}

/// Counts the request `skipped` by every selected mirror: it will not be mirrored.
pub fn skip_all(mirrors: &Mirrors, selected: &Selection) {
    for (_, member) in selected.iter(mirrors) {
        member.mirror.skip();
    }
}

/// What becomes of the copy of a request some mirror selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Not mirrored, counted `skipped`: a loop (the request carries this proxy's `Via`),
    /// an upgrade (a copy cannot take part in the conversation), or a body announced
    /// larger than `--max-body-size`.
    Skip,
    /// Offered to the selected mirrors once the body is complete.
    Offer,
}

/// The fate of a selected request's copy, from whether it `looped`, is an `upgrade`,
/// and the least length its body announces (`body_lower`).
pub fn fate(looped: bool, upgrade: bool, body_lower: u64, max_body_size: u64) -> Fate {
    if looped || upgrade || body_lower > max_body_size {
        Fate::Skip
    } else {
        Fate::Offer
    }
}

/// What main's answer owes the mirrors that selected its request: ordered mirrors
/// learn when it is complete (see `mirror::ordered`), comparing ones get it.
#[derive(Default)]
pub struct Followers {
    pub halves: Vec<MainHalf>,
    /// Main's answer for comparing mirrors, once complete.
    pub answer_tx: Option<MainAnswerTx>,
    /// For a gRPC call: to set when main's answer has ended (see [`Offer::main_ended`]).
    pub main_ended: Option<Arc<AtomicBool>>,
}

/// The mirrors' side of [`Followers`], travelling with the [`Offer`].
pub struct Awaiting {
    /// For ordered mirrors (by index): the copies each must follow.
    pub orders: Vec<(usize, MirrorHalf)>,
    pub main_answer: Option<MainAnswerRx>,
    pub main_ended: Option<Arc<AtomicBool>>,
    /// When the request arrived: read only when a recording mirror selected it (its
    /// records' timestamp), so other requests never read the clock for it.
    pub arrived: Option<std::time::SystemTime>,
}

impl Followers {
    /// Registers the request's arrival with each selected ordered mirror, and opens the
    /// channel of main's answer when a selected mirror compares and the request is not
    /// `unmirrored` (a loop or an upgrade); for a `grpc` call, the flag of main's
    /// answer's end.
    pub fn of(
        mirrors: &Mirrors,
        selected: &Selection,
        unmirrored: bool,
        grpc: bool,
    ) -> (Self, Awaiting) {
        let mut halves = Vec::new();
        let mut orders = Vec::new();
        let mut comparing = false;
        let mut recording = false;
        for (index, member) in selected.iter(mirrors) {
            if member.plan.options.ordered {
                let (main_half, mirror_half) = member.mirror.arrive();
                halves.push(main_half);
                orders.push((index, mirror_half));
            }
            // A recording mirror with `record_answers=true` writes main's answer too.
            comparing |= member.plan.compare.is_some() || member.plan.options.record_answers;
            recording |= matches!(
                member.mirror.url().transport(),
                Transport::File | Transport::Nats
            );
        }
        let (answer_tx, main_answer) = if comparing && !unmirrored {
            let (tx, rx) = tokio::sync::watch::channel(None);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let main_ended = (grpc && !unmirrored).then(Arc::default);
        let awaiting = Awaiting {
            orders,
            main_answer,
            main_ended: main_ended.clone(),
            arrived: recording.then(std::time::SystemTime::now),
        };
        let followers = Self {
            halves,
            answer_tx,
            main_ended,
        };
        (followers, awaiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Budget;
    use crate::cli::Cli;
    use crate::config::Config;
    use crate::mirror::Source;
    use crate::mirror::options::MirrorLine;
    use crate::registry::Registry;

    /// The mirror set of `lines`.
    fn mirrors(lines: &[&str]) -> Mirrors {
        let cli = Cli::try_parse_args(["trafficmirror"]).unwrap();
        let registry = Registry::new(
            Config::from_cli(&cli).unwrap().proxy.mirror,
            Budget::new(1024),
        );
        let lines: Vec<_> = lines
            .iter()
            .map(|l| MirrorLine::parse(l).unwrap())
            .collect();
        registry.add_lines(&lines, Source::Admin);
        registry.snapshot()
    }

    #[test]
    fn a_selection_lists_its_members_in_order_past_the_first_64() {
        let urls: Vec<String> = (0..70).map(|i| format!("http://m{i}:1")).collect();
        let lines: Vec<&str> = urls.iter().map(String::as_str).collect();
        let mirrors = mirrors(&lines);
        let mut selected = Selection::default();
        assert!(selected.is_empty());
        for index in [66, 1, 63, 69, 0, 200] {
            selected.add(index);
        }
        assert!(!selected.is_empty());
        let picked: Vec<usize> = selected.iter(&mirrors).map(|(i, _)| i).collect();
        // Past the first 64 in the order added; an index past the list is left out.
        assert_eq!(picked, [0, 1, 63, 66, 69]);
        let (_, member) = selected.iter(&mirrors).nth(3).unwrap();
        assert_eq!(member.mirror.url().as_str(), "http://m66:1");
    }

    #[test]
    fn select_takes_the_mirrors_whose_options_want_the_request() {
        let mirrors = mirrors(&[
            "http://a:1 method=POST",
            "http://b:1 path=/api",
            "http://c:1",
        ]);
        let headers = HeaderMap::new();
        let picked = |method: Method, path: &str| -> Vec<usize> {
            let selected = select(&mirrors, &method, path, &headers, false);
            selected.iter(&mirrors).map(|(i, _)| i).collect()
        };
        assert_eq!(picked(Method::GET, "/"), [2]);
        assert_eq!(picked(Method::POST, "/api/x"), [0, 1, 2]);
        let status = mirrors[0].mirror.status(&mirrors[0].plan);
        assert_eq!(status.counters.filtered, 1);
    }

    #[test]
    fn loops_upgrades_and_bodies_announced_too_large_are_skipped() {
        assert_eq!(fate(false, false, 10, 10), Fate::Offer);
        assert_eq!(fate(false, false, 11, 10), Fate::Skip);
        assert_eq!(fate(true, false, 0, 10), Fate::Skip);
        assert_eq!(fate(false, true, 0, 10), Fate::Skip);
    }

    #[test]
    fn an_offer_without_host_leaves_a_slot_for_each_copys() {
        let mirrors = mirrors(&["http://a:1"]);
        let awaiting = || Awaiting {
            orders: Vec::new(),
            main_answer: None,
            main_ended: None,
            arrived: None,
        };
        let (parts, ()) = http::Request::put("/x?y=1")
            .header("x-kept", "1")
            .body(())
            .unwrap()
            .into_parts();
        let offer = Offer::new(
            mirrors.clone(),
            Selection::default(),
            awaiting(),
            &parts,
            false,
            true,
        );
        assert!(offer.host_slot);
        assert_eq!(offer.headers[header::HOST], "");
        assert_eq!(offer.headers["x-kept"], "1");
        assert_eq!(offer.method, Method::PUT);
        assert_eq!(offer.path_and_query.unwrap(), "/x?y=1");

        let (parts, ()) = http::Request::get("/")
            .header(header::HOST, "kept.example")
            .body(())
            .unwrap()
            .into_parts();
        let offer = Offer::new(
            mirrors,
            Selection::default(),
            awaiting(),
            &parts,
            false,
            false,
        );
        assert!(!offer.host_slot);
        assert_eq!(offer.headers[header::HOST], "kept.example");
    }
}
