#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The two state machine definitions (infra/statemachine.asl.json, Standard, and
//! infra/statemachine.express.asl.json, Express) against the functions' contract and each
//! other: what they share stays the same, and each routes every move the functions return.

use std::collections::BTreeSet;

use serde_json::Value;

fn definition(file: &str) -> Value {
    let path = format!("{}/../../infra/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The routes the Route choice state sends somewhere.
fn routed(d: &Value) -> BTreeSet<String> {
    d["States"]["Route"]["Choices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| {
            c["StringEquals"].as_str().or_else(|| {
                c["And"]
                    .as_array()?
                    .iter()
                    .find_map(|a| a["StringEquals"].as_str())
            })
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn express_routes_every_move_and_holds_no_wait() {
    // GIVEN the Express definition
    let express = definition("statemachine.express.asl.json");
    let text = express.to_string();
    // THEN nothing in it waits for a task token (Express refuses those)
    assert!(!text.contains("waitForTaskToken"));
    assert!(!text.contains("$$.Task.Token"));
    // AND it routes every move the functions return, its own included
    let all = [
        "plan",
        "dispatch",
        "await",
        "succeeded",
        "failed",
        "cancelled",
        "continue",
        "superseded",
    ];
    assert_eq!(routed(&express), all.map(String::from).into());
    // AND a segment starts by claiming itself
    assert_eq!(express["StartAt"], "Claim");
    let claim = &express["States"]["Claim"]["Parameters"]["Payload"];
    assert_eq!(claim["op"], "claim");
    assert_eq!(claim["execution.$"], "$$.Execution.Id");
}

#[test]
fn standard_routes_every_move_of_a_run_without_segments() {
    let standard = definition("statemachine.asl.json");
    let expected = [
        "plan",
        "dispatch",
        "await",
        "succeeded",
        "failed",
        "cancelled",
    ];
    assert_eq!(routed(&standard), expected.map(String::from).into());
    assert_eq!(standard["StartAt"], "Plan");
}

#[test]
fn the_two_definitions_share_their_dispatch_and_their_ends() {
    // GIVEN both definitions
    let standard = definition("statemachine.asl.json");
    let express = definition("statemachine.express.asl.json");
    // THEN the states that do not depend on segments are the same, except Express's shorter
    // timeouts (nothing may outlast its five minutes)
    let without_timeouts = |v: &Value| {
        let mut v = v.clone();
        strip(&mut v, "TimeoutSeconds");
        v
    };
    for state in [
        "Notify",
        "Ended",
        "Done",
        "RunFailed",
        "RunFailedWithoutCause",
        "RunCancelled",
        "UnknownRoute",
    ] {
        assert_eq!(
            without_timeouts(&express["States"][state]),
            without_timeouts(&standard["States"][state]),
            "{state}"
        );
    }
    assert_eq!(
        without_timeouts(&express["States"]["Dispatch"]),
        without_timeouts(&standard["States"]["Dispatch"])
    );
    // AND every Express timeout is under five minutes
    let mut timeouts = Vec::new();
    collect(&express, "TimeoutSeconds", &mut timeouts);
    assert!(!timeouts.is_empty());
    assert!(
        timeouts.iter().all(|t| t.as_u64().unwrap() < 300),
        "{timeouts:?}"
    );
    // AND Plan and Advance tell the functions which segment they are in
    for state in ["Plan", "Advance"] {
        let payload = &express["States"][state]["Parameters"]["Payload"];
        assert_eq!(
            payload["segment.$"], "$$.Execution.Input.segment",
            "{state}"
        );
        assert!(
            standard["States"][state]["Parameters"]["Payload"]
                .get("segment.$")
                .is_none()
        );
    }
}

fn strip(v: &mut Value, key: &str) {
    match v {
        Value::Object(map) => {
            map.remove(key);
            map.values_mut().for_each(|v| strip(v, key));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| strip(v, key)),
        _ => {}
    }
}

fn collect(v: &Value, key: &str, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            if let Some(found) = map.get(key) {
                out.push(found.clone());
            }
            map.values().for_each(|v| collect(v, key, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect(v, key, out)),
        _ => {}
    }
}
