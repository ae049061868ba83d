//! The report: `GET <admin path>/report?url=U`, one comparing mirror's verdict, results
//! per endpoint, regressions, noise and example mismatches as one self-contained HTML
//! document, to read in a browser or save and attach to a review.
//!
//! Unlike the status page, the data is written into the document by the server, so it
//! reads the same saved to a file. Every value that comes from traffic, answers or the
//! mirror's URL passes through [`escape`] and lands only in element content or a quoted
//! attribute; the document has no script at all, and it is sent with the status page's
//! Content-Security-Policy besides.

use std::fmt::Write;

use super::page::escape;
use crate::mirror::compare::decision::Decision;
use crate::mirror::compare::endpoints::{Compared, EndpointSnapshot};
use crate::mirror::compare::mismatches::Record;

/// How many example mismatches the report shows.
pub const EXAMPLES: usize = 10;

/// The report on the mirror at `url`, from the same snapshots `/verdict`, `/endpoints`
/// and `/mismatches` answer.
pub fn render(
    url: &str,
    decision: &Decision,
    endpoints: &[EndpointSnapshot],
    mismatches: &[Record],
) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let url = escape(url);
    let (class, verdict) = match decision.pass {
        Some(true) => ("pass", "pass"),
        Some(false) => ("fail", "fail"),
        None => ("undecided", "undecided"),
    };
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>trafficmirror report: {url}</title><style>{STYLE}</style></head><body>\
         <h1>Shadow report for {url}</h1>\
         <p class=\"verdict {class}\" id=\"verdict\">Verdict: <strong>{verdict}</strong> \
         ({} answers compared)</p><ul id=\"reasons\">",
        decision.compared
    );
    for reason in &decision.reasons {
        let _ = write!(out, "<li>{}</li>", escape(reason));
    }
    out.push_str("</ul><h2>Endpoints</h2>");
    endpoint_table(&mut out, endpoints);
    out.push_str("<h2>Regressions and noise</h2>");
    findings(&mut out, endpoints);
    let _ = write!(
        out,
        "<h2>Example mismatches</h2><p>The latest {} at most; main on the left, the mirror \
         on the right.</p>",
        EXAMPLES
    );
    examples(&mut out, mismatches);
    out.push_str("</body></html>\n");
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;\
text-align:left;vertical-align:top}td.n{text-align:right}code,pre{font-family:monospace;\
white-space:pre-wrap;word-break:break-all;margin:0}.verdict{font-size:1.3em}\
.pass strong{color:#176f2c}.fail strong{color:#b3261e}.undecided strong{color:#8a6d00}";

fn millis(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"))
}

fn endpoint_table(out: &mut String, endpoints: &[EndpointSnapshot]) {
    if endpoints.is_empty() {
        out.push_str("<p>No answers compared yet.</p>");
        return;
    }
    out.push_str(
        "<table id=\"endpoints\"><tr><th>Method</th><th>Template</th><th>Compared</th>\
         <th>Mismatched</th><th>Main p50 / p99 ms</th><th>Mirror p50 / p99 ms</th></tr>",
    );
    for e in endpoints {
        let _ = write!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{} / {}</td><td class=\"n\">{} / {}</td></tr>",
            escape(&e.method),
            escape(&e.template),
            e.compared,
            e.mismatched,
            millis(e.main_latency_ms.p50),
            millis(e.main_latency_ms.p99),
            millis(e.mirror_latency_ms.p50),
            millis(e.mirror_latency_ms.p99),
        );
    }
    out.push_str("</table>");
}

fn findings(out: &mut String, endpoints: &[EndpointSnapshot]) {
    let with = endpoints
        .iter()
        .filter(|e| !e.regressions.is_empty() || !e.noise.is_empty() || !e.fields.is_empty());
    let mut any = false;
    for e in with {
        any = true;
        let _ = write!(
            out,
            "<h3><code>{} {}</code></h3>",
            escape(&e.method),
            escape(&e.template)
        );
        if e.regressions.is_empty() && e.noise.is_empty() {
            // No baseline: the differing fields as counted.
            out.push_str("<table><tr><th>Differing field</th><th>Count</th></tr>");
            for f in &e.fields {
                let _ = write!(
                    out,
                    "<tr><td><code>{}</code></td><td class=\"n\">{}</td></tr>",
                    escape(&f.field),
                    f.count
                );
            }
            out.push_str("</table>");
            continue;
        }
        compared(out, "Regression", "regressions", &e.regressions);
        compared(out, "Noise", "noise", &e.noise);
    }
    if !any {
        out.push_str("<p>No differing fields.</p>");
    }
}

fn compared(out: &mut String, title: &str, class: &str, list: &[Compared]) {
    if list.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "<table class=\"{class}\"><tr><th>{title}</th><th>Mirror count</th>\
         <th>Baseline count</th></tr>"
    );
    for f in list {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&f.field),
            f.count,
            f.baseline_count
        );
    }
    out.push_str("</table>");
}

/// One difference as (what differs, main's side, the mirror's side), read from its
/// serialised form so every kind shows without a case of its own here.
fn sides(record: &Record) -> (String, String, String) {
    let value = serde_json::to_value(&record.difference).unwrap_or_default();
    let mut what = Vec::new();
    let (mut main, mut mirror) = (String::new(), String::new());
    if let serde_json::Value::Object(map) = value {
        for (key, v) in map {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => "(absent)".to_owned(),
                other => other.to_string(),
            };
            match key.as_str() {
                "main" | "main_len" => main = text,
                "mirror" | "mirror_len" => mirror = text,
                _ => what.push(format!("{key}: {text}")),
            }
        }
    }
    (what.join(", "), main, mirror)
}

fn examples(out: &mut String, mismatches: &[Record]) {
    if mismatches.is_empty() {
        out.push_str("<p>None recorded.</p>");
        return;
    }
    out.push_str(
        "<table id=\"examples\"><tr><th>Request</th><th>Difference</th><th>Main</th>\
         <th>Mirror</th></tr>",
    );
    for record in mismatches.iter().take(EXAMPLES) {
        let (what, main, mirror) = sides(record);
        let fields = record.fields.join(" ");
        let _ = write!(
            out,
            "<tr><td><code>{} {}</code></td><td>{}<br><small>fields: <code>{}</code></small></td>\
             <td><pre>{} · {}</pre></td><td><pre>{} · {}</pre></td></tr>",
            escape(&record.method),
            escape(&record.path_and_query),
            escape(&what),
            escape(&fields),
            record.main_status,
            escape(&main),
            record.mirror_status,
            escape(&mirror),
        );
    }
    out.push_str("</table>");
}
