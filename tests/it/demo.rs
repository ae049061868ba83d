//! `trafficmirror demo`: the whole product in one process, run as a user would.

use std::time::Duration;

use crate::support::*;

/// The JSON listing entry of the demo mirror whose banner line contains `name`.
fn entry<'a>(
    listing: &'a [serde_json::Value],
    banner: &[String],
    name: &str,
) -> &'a serde_json::Value {
    let line = banner
        .iter()
        .find(|l| l.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("no {name} line in {banner:?}"));
    let url = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no URL in {line:?}"));
    listing
        .iter()
        .find(|m| m["url"] == url)
        .unwrap_or_else(|| panic!("{url} not listed"))
}

#[tokio::test]
async fn the_demo_mirrors_compares_and_stops_on_sigint() {
    let demo = Binary::start_with(&["demo", "--listen", "127.0.0.1:0", "--rate", "50"], &[]).await;
    assert!(demo.banner[0].starts_with("trafficmirror demo: proxy on http://127.0.0.1:"));
    let admin = demo.url("/targets?format=json");
    let listing = || async {
        let resp = get(&admin).await;
        serde_json::from_slice::<Vec<serde_json::Value>>(&resp.body).unwrap()
    };
    // Both differ from main in a timestamp; the candidate also for one user in seven.
    eventually(
        "both mirrors receive and compare traffic, the candidate mismatches",
        || async {
            let listing = listing().await;
            let stable = entry(&listing, &demo.banner, "stable");
            let candidate = entry(&listing, &demo.banner, "candidate");
            stable["compare"]["mismatched"].as_u64() > Some(5)
                && candidate["compare"]["mismatched"].as_u64() > Some(0)
        },
    )
    .await;
    let listing = listing().await;
    let stable = entry(&listing, &demo.banner, "stable");
    assert_eq!(stable["failed"], 0, "{stable}");
    // The stable mirror is the baseline: the timestamp is told apart as noise, the plan
    // as the candidate's regression.
    let candidate = entry(&listing, &demo.banner, "candidate")["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let endpoints = demo.url(&format!("/targets/endpoints?url={candidate}"));
    eventually("the plan is a regression, the timestamp noise", || async {
        let resp = get(&endpoints).await;
        let list: Vec<serde_json::Value> = serde_json::from_slice(&resp.body).unwrap();
        let users = list.iter().find(|e| e["template"] == "/users/{id}");
        let has = |e: &serde_json::Value, kind: &str, field: &str| {
            e[kind]
                .as_array()
                .is_some_and(|a| a.iter().any(|f| f["field"] == field))
        };
        users.is_some_and(|e| has(e, "regressions", "/plan") && has(e, "noise", "/served_at"))
    })
    .await;
    demo.signal("INT");
    let (code, stderr) = demo.wait(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "{stderr}");
}
