//! The reference run's trace, read back from a real OTLP receiver (Arize Phoenix, started by
//! `infra/phoenix.sh`; `PHOENIX_URL` names it), and reduced to an outline that compares equal
//! on every path: the run's spans (`run`, `plan`/`replan`, `step`, the model calls), each under
//! its nearest such ancestor, children in a canonical order. Other spans (an API request, a
//! Lambda invocation) are looked through. Pinned in `tests/golden/reference_trace.txt`;
//! `GOLDEN_UPDATE=1` rewrites it.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The receiver's base URL, or `None` (the test says how to run it and returns) outside CI.
pub fn phoenix_url(test: &str) -> Option<String> {
    match std::env::var("PHOENIX_URL") {
        Ok(url) if !url.is_empty() => Some(url.trim_end_matches('/').to_owned()),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{test}: CI must start Phoenix and set PHOENIX_URL (see .ci/run)")
        }
        _ => {
            eprintln!(
                "skipped {test}: set PHOENIX_URL=$(bash infra/phoenix.sh) to check traces against Phoenix"
            );
            None
        }
    }
}

/// A project name of its own, so that this test reads only its own spans.
pub fn project(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// The variables that send a process's spans to `url`, into `project`.
pub fn exporting_to(url: &str, project: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.to_owned()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("openinference.project.name={project}"),
        ),
    ]
}

/// A span as Phoenix returns it.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: Option<String>,
    pub attributes: Value,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    fn of(v: &Value) -> Span {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        Span {
            name: text(&v["name"]),
            trace_id: text(&v["context"]["trace_id"]),
            span_id: text(&v["context"]["span_id"]),
            parent_id: v["parent_id"].as_str().map(str::to_owned),
            attributes: v["attributes"].clone(),
        }
    }
}

/// The project's spans once the reference run's trace has arrived (spans come in batches,
/// from several processes) and `also` holds, or whatever arrived after `wait`. Arrived: its
/// outline is the golden one; when rewriting the golden file, its outline has stopped changing.
pub fn reference_spans(
    url: &str,
    project: &str,
    wait: Duration,
    also: impl Fn(&[Span]) -> bool,
) -> Vec<Span> {
    let updating = std::env::var_os("GOLDEN_UPDATE").is_some();
    let last = std::cell::RefCell::new((Vec::new(), 0));
    spans_until(url, project, wait, |spans| {
        let outline = outline(spans);
        let mut last = last.borrow_mut();
        last.1 = if outline == last.0 { last.1 + 1 } else { 0 };
        let arrived = !outline.is_empty()
            && if updating {
                last.1 >= 6
            } else {
                outline == golden()
            };
        last.0 = outline;
        arrived && also(spans)
    })
}

/// The project's spans once `done` holds for them, or whatever arrived after `wait`.
pub fn spans_until(
    url: &str,
    project: &str,
    wait: Duration,
    done: impl Fn(&[Span]) -> bool,
) -> Vec<Span> {
    let deadline = Instant::now() + wait;
    loop {
        let spans = spans(url, project);
        if done(&spans) || Instant::now() > deadline {
            return spans;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn spans(url: &str, project: &str) -> Vec<Span> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/projects/{project}/spans?limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let Some(page) = get(url, &path) else {
            return out; // no such project yet: nothing has arrived
        };
        out.extend(page["data"].as_array().into_iter().flatten().map(Span::of));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// GET over plain HTTP/1.0 (the receiver is local): the JSON body, or `None` on a 404.
fn get(url: &str, path: &str) -> Option<Value> {
    let authority = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(authority).expect("Phoenix answers at PHOENIX_URL");
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if head.starts_with("HTTP/1.1 404") || head.starts_with("HTTP/1.0 404") {
        return None;
    }
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{path}: {head}\n{body}"
    );
    Some(serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
}

/// Is this one of the run's own spans (as opposed to a request or an invocation)?
fn of_the_run(span: &Span) -> bool {
    matches!(span.name.as_str(), "run" | "plan" | "replan" | "step")
        || span.name.starts_with("chat ")
}

/// One line per span of the run, indented under its nearest run-span ancestor.
pub fn outline(spans: &[Span]) -> Vec<String> {
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut children: BTreeMap<Option<&str>, Vec<&Span>> = BTreeMap::new();
    for span in spans.iter().filter(|s| of_the_run(s)) {
        let mut parent = span.parent_id.as_deref();
        while let Some(p) = parent.and_then(|id| by_id.get(id)) {
            if of_the_run(p) {
                break;
            }
            parent = p.parent_id.as_deref();
        }
        let parent = parent.filter(|id| by_id.contains_key(id));
        children.entry(parent).or_default().push(span);
    }
    let mut lines = Vec::new();
    write_level(&children, None, 0, &mut lines);
    lines
}

fn write_level(
    children: &BTreeMap<Option<&str>, Vec<&Span>>,
    parent: Option<&str>,
    depth: usize,
    lines: &mut Vec<String>,
) {
    let mut level: Vec<(String, &str)> = children
        .get(&parent)
        .into_iter()
        .flatten()
        .map(|s| (label(s), s.span_id.as_str()))
        .collect();
    level.sort();
    for (label, id) in level {
        lines.push(format!("{}{label}", "  ".repeat(depth)));
        write_level(children, Some(id), depth + 1, lines);
    }
}

/// The span's name and what tells it apart from its siblings.
fn label(span: &Span) -> String {
    let text = |k: &str| {
        span.attr(k)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_default()
    };
    match span.name.as_str() {
        "step" => format!(
            "step {} attempt {} ({})",
            text("step.id"),
            text("step.attempt"),
            text("step.capability")
        ),
        name => name.to_owned(),
    }
}

pub fn golden_path() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("tests/golden").is_dir() {
        assert!(dir.pop(), "no tests/golden above the package");
    }
    dir.join("tests/golden/reference_trace.txt")
}

pub fn golden() -> Vec<String> {
    std::fs::read_to_string(golden_path())
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Fails unless the outline is the golden one (`GOLDEN_UPDATE=1` writes it instead).
pub fn assert_golden(path: &str, outline: &[String]) {
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::write(golden_path(), outline.join("\n") + "\n").unwrap();
        return;
    }
    assert_eq!(
        outline,
        golden().as_slice(),
        "{path}: the reference run's trace is not the golden one (tests/golden/reference_trace.txt)"
    );
}

/// What every path must hold besides the outline: one trace, every span of the run naming
/// it, every model call described with the GenAI conventions, and the calls' tokens adding up
/// to the run's own count.
pub fn assert_attributes(spans: &[Span], run_id: &str, tokens: (u64, u64)) {
    let run_spans: Vec<&Span> = spans.iter().filter(|s| of_the_run(s)).collect();
    assert!(!run_spans.is_empty(), "no span of the run arrived");
    let trace = &run_spans[0].trace_id;
    for span in &run_spans {
        assert_eq!(&span.trace_id, trace, "{} is in another trace", span.name);
        if !span.name.starts_with("chat ") {
            assert_eq!(
                span.attr("run.id").and_then(Value::as_str),
                Some(run_id),
                "{}: run.id",
                span.name
            );
        }
    }
    let mut sum = (0, 0);
    for call in run_spans.iter().filter(|s| s.name.starts_with("chat ")) {
        let attr = |k: &str| {
            call.attr(k)
                .unwrap_or_else(|| panic!("{k} missing: {call:?}"))
        };
        assert_eq!(attr("gen_ai.operation.name"), "chat");
        assert!(attr("gen_ai.provider.name").is_string());
        assert_eq!(
            format!("chat {}", attr("gen_ai.request.model").as_str().unwrap()),
            call.name
        );
        sum.0 += attr("gen_ai.usage.input_tokens").as_u64().unwrap();
        sum.1 += attr("gen_ai.usage.output_tokens").as_u64().unwrap();
    }
    assert_eq!(sum, tokens, "the model calls' tokens are the run's tokens");
}

/// The run id and the run's token count (its last run-level `metrics` frame), from the data of
/// its frames.
pub fn run_and_tokens(frames: &[Value]) -> (String, (u64, u64)) {
    let run_id = frames[0]["runId"].as_str().unwrap().to_owned();
    let total = frames
        .iter()
        .rfind(|f| f["type"] == "metrics" && f.get("data").is_none())
        .expect("a run-level metrics frame");
    let tokens = &total["tokens"];
    (
        run_id,
        (
            tokens["input"].as_u64().unwrap(),
            tokens["output"].as_u64().unwrap(),
        ),
    )
}
