//! The mirrors' offer of a request: which mirrors of the set its copy goes to
//! ([`Selection`], chosen by [`select`] from each mirror's options), and the head every
//! copy carries ([`Offer`]), handed to those mirrors once the body is complete
//! ([`super::tee`] collects it).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method};

use crate::budget::Held;
use crate::mirror::ordered::{MainHalf, MirrorHalf};
use crate::mirror::shadow::{MainAnswerRx, MainAnswerTx};
use crate::mirror::{Member, MirrorRequest};
use crate::registry::Mirrors;

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
}

impl Offer {
    /// The offer of a request whose head is rewritten (`parts`) to the `selected`
    /// members of `mirrors`, each copy waiting as `awaiting` says.
    pub fn new(
        mirrors: Mirrors,
        selected: Selection,
        awaiting: Awaiting,
        parts: &http::request::Parts,
    ) -> Self {
        let mut headers = parts.headers.clone();
        // A slot each copy fills with its mirror's authority in place, so that the
        // per-copy clone of this map never grows (a reallocation per copy).
        let host_slot = !headers.contains_key(header::HOST);
        if host_slot {
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
        }
    }

    /// Hands the finished copy to every selected mirror (never waits).
    pub fn deliver(mut self, body: Bytes, held: Held) {
        let request = Arc::new(MirrorRequest {
            method: self.method,
            path_and_query: self.path_and_query,
            headers: self.headers,
            host_slot: self.host_slot,
            body,
            _held: held,
            main_answer: self.main_answer,
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
pub fn select(
    mirrors: &Mirrors,
    method: &Method,
    path: &str,
    headers: &http::HeaderMap,
) -> Selection {
    let mut selected = Selection::default();
    for (index, member) in mirrors.iter().enumerate() {
        if member.plan.selects(method, path, headers) {
            selected.add(index);
        } else {
            member.mirror.filter();
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
}

/// The mirrors' side of [`Followers`], travelling with the [`Offer`].
pub struct Awaiting {
    /// For ordered mirrors (by index): the copies each must follow.
    pub orders: Vec<(usize, MirrorHalf)>,
    pub main_answer: Option<MainAnswerRx>,
}

impl Followers {
    /// Registers the request's arrival with each selected ordered mirror, and opens the
    /// channel of main's answer when a selected mirror compares and the request is not
    /// `unmirrored` (a loop or an upgrade).
    pub fn of(mirrors: &Mirrors, selected: &Selection, unmirrored: bool) -> (Self, Awaiting) {
        let mut halves = Vec::new();
        let mut orders = Vec::new();
        let mut comparing = false;
        for (index, member) in selected.iter(mirrors) {
            if member.plan.options.ordered {
                let (main_half, mirror_half) = member.mirror.arrive();
                halves.push(main_half);
                orders.push((index, mirror_half));
            }
            comparing |= member.plan.compare.is_some();
        }
        let (answer_tx, main_answer) = if comparing && !unmirrored {
            let (tx, rx) = tokio::sync::watch::channel(None);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let awaiting = Awaiting {
            orders,
            main_answer,
        };
        (Self { halves, answer_tx }, awaiting)
    }
}
