#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The README's examples against the real binary, so that they cannot drift from it: the main
//! job's rendered output (the `run` block), the example stream (the `stream` block) and the
//! exit code table.
//!
//! A checked block is a fenced code block between `<!-- readme-example: NAME -->` and
//! `<!-- /readme-example -->`. In the `run` block every line but `...` is a line of the output,
//! in order; lines the README skips are marked by a `...` line, so none is invented or dropped
//! unsaid. Run ids, step times and the run's total seconds are compared as placeholders; token
//! counts are deterministic with the offline model and compared as they are. In the `stream`
//! block every quoted frame is the run's frame with that id, whole (ids, durations and
//! `expiresAt` normalised as `tests/golden` does; a `delta` frame only by its event, since
//! timing cuts drafts into deltas).
//!
//! `README_UPDATE=1 cargo test --test readme_examples` rewrites both blocks from a fresh run,
//! keeping the lines and frames the README chose where they still exist.

mod golden;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use orchestrator_core::event::SseParser;
use serde_json::Value;

const UPDATE_HINT: &str = "README_UPDATE=1 cargo test --test readme_examples";

/// Held while a test reads and rewrites README.md, so two updates never interleave.
static README: Mutex<()> = Mutex::new(());

fn readme_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ has a parent")
        .join("README.md")
}

fn updating() -> bool {
    std::env::var_os("README_UPDATE").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The binary as a newcomer runs it: no model provider, a fresh database.
fn orchestrator(db: &Path, args: &[&str], chunk_ms: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.env_remove("MODEL_PROVIDER")
        .env_remove("ORCHESTRATOR_DB")
        .env_remove("ORCHESTRATOR_STORE")
        .env_remove("ORCHESTRATOR_OFFLINE_CHUNK_MS");
    if let Some(ms) = chunk_ms {
        cmd.env("ORCHESTRATOR_OFFLINE_CHUNK_MS", ms);
    }
    cmd.arg("--db").arg(db).args(args).output().expect("run")
}

/// The main job, run once on a fresh database.
fn main_job(args: &[&str], chunk_ms: Option<&str>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["run", golden::OBJECTIVE];
    all.extend_from_slice(args);
    let out = orchestrator(&dir.path().join("runs.db"), &all, chunk_ms);
    assert!(
        out.status.success(),
        "the main job failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A checked block of README.md: its fenced lines and where they start.
struct Block {
    /// Index (0-based) of the block's first line in README.md.
    first: usize,
    lines: Vec<String>,
}

impl Block {
    fn find(readme: &str, name: &str) -> Block {
        let lines: Vec<&str> = readme.lines().collect();
        let marker = format!("<!-- readme-example: {name} -->");
        let at = lines
            .iter()
            .position(|l| l.trim() == marker)
            .unwrap_or_else(|| panic!("README.md has no `{marker}` line"));
        assert!(
            lines.get(at + 1).is_some_and(|l| l.starts_with("```")),
            "README.md line {}: a fenced code block must follow `{marker}`",
            at + 2
        );
        let first = at + 2;
        let len = lines[first..]
            .iter()
            .position(|l| l.trim_end() == "```")
            .unwrap_or_else(|| panic!("README.md: the `{name}` block is not closed"));
        assert!(
            lines
                .get(first + len + 1)
                .is_some_and(|l| l.trim() == "<!-- /readme-example -->"),
            "README.md line {}: `<!-- /readme-example -->` must follow the `{name}` block",
            first + len + 2
        );
        Block {
            first,
            lines: lines[first..first + len]
                .iter()
                .map(|l| (*l).to_owned())
                .collect(),
        }
    }

    /// README.md line number (1-based) of the block's `k`th line.
    fn line_no(&self, k: usize) -> usize {
        self.first + k + 1
    }
}

/// Replaces the named block's lines in README.md.
fn rewrite(name: &str, lines: &[String]) {
    let path = readme_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let block = Block::find(&text, name);
    let mut all: Vec<&str> = text.lines().collect();
    all.splice(
        block.first..block.first + block.lines.len(),
        lines.iter().map(String::as_str),
    );
    let mut out = all.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    std::fs::write(&path, out).unwrap();
    eprintln!("README.md: the `{name}` block rewritten from the run");
}

// ---- the main job's rendered output ---------------------------------------------------------

/// The line as compared: no trailing blanks, run ids, step times and total seconds replaced.
fn normalise_line(line: &str) -> String {
    let line = replace_uuids(line.trim_end());
    let line = replace_number(&line, "done in ", " ms", "<ms>");
    replace_number(&line, "Σ ", " s", "<s>")
}

fn replace_uuids(s: &str) -> String {
    let is_uuid = |b: &[u8]| {
        b.iter().enumerate().all(|(k, c)| match k {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
    };
    let bytes = s.as_bytes();
    let (mut out, mut i, mut kept) = (String::new(), 0, 0);
    while i + 36 <= bytes.len() {
        if is_uuid(&bytes[i..i + 36]) {
            // A UUID is ASCII, so `i` and `i + 36` are character boundaries.
            out.push_str(&s[kept..i]);
            out.push_str("<run-id>");
            i += 36;
            kept = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&s[kept..]);
    out
}

/// `<before>N<after>` (N digits, maybe with a point) becomes `<before><placeholder><after>`.
fn replace_number(s: &str, before: &str, after: &str, placeholder: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find(before) {
        let (head, tail) = rest.split_at(at + before.len());
        out.push_str(head);
        let digits = tail
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(tail.len());
        if digits > 0 && tail[digits..].starts_with(after) {
            out.push_str(placeholder);
            rest = &tail[digits..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

fn is_elision(line: &str) -> bool {
    line.trim() == "..."
}

/// Every line of the block but `...` is the output's line, in order; a line that follows
/// another with no `...` between them is the output's next line.
fn check_run_block(block: &Block, output: &[&str]) -> Result<(), String> {
    let output: Vec<String> = output.iter().map(|l| normalise_line(l)).collect();
    let (mut next, mut skipping) = (0, false);
    for (k, line) in block.lines.iter().enumerate() {
        if is_elision(line) {
            skipping = true;
            continue;
        }
        let want = normalise_line(line);
        let found = if skipping {
            output[next.min(output.len())..]
                .iter()
                .position(|o| *o == want)
                .map(|p| p + next)
        } else {
            (output.get(next) == Some(&want)).then_some(next)
        };
        let Some(at) = found else {
            let place = if skipping {
                "anywhere after the line before it".to_owned()
            } else {
                format!(
                    "the next line (that is {:?}; a `...` line skips lines)",
                    output.get(next).map_or("<the end>", String::as_str)
                )
            };
            return Err(format!(
                "README.md line {}: {line:?} is not {place} in the output of `orchestrator run`",
                block.line_no(k)
            ));
        };
        next = at + 1;
        skipping = false;
    }
    if !skipping && next < output.len() {
        return Err(format!(
            "README.md line {}: the output goes on after the block's last line ({:?} is next); end the block with `...`",
            block.line_no(block.lines.len().saturating_sub(1)),
            output[next]
        ));
    }
    Ok(())
}

/// Digits masked, for finding the line a README line was once the quote of.
fn shape_of(line: &str) -> String {
    normalise_line(line)
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

/// The block again from `output`: each README line that is still there (or a line of the same
/// shape, its numbers changed), with `...` where lines are skipped. A line still there is kept
/// as the README has it (its run id and times too), so an update changes only what moved. A
/// README line with no such line is dropped; with none left, the block is the whole output.
fn updated_run_block(block: &Block, output: &[&str]) -> Vec<String> {
    let normalised: Vec<String> = output.iter().map(|l| normalise_line(l)).collect();
    let shapes: Vec<String> = output.iter().map(|l| shape_of(l)).collect();
    let mut picks: Vec<(usize, String)> = Vec::new();
    let mut next = 0;
    for line in block.lines.iter().filter(|l| !is_elision(l)) {
        let (want, shape) = (normalise_line(line), shape_of(line));
        let from = next.min(output.len());
        let same = normalised[from..].iter().position(|o| *o == want);
        let picked = match same {
            Some(at) => Some((from + at, line.trim_end().to_owned())),
            None => shapes[from..]
                .iter()
                .position(|s| *s == shape)
                .map(|at| (from + at, output[from + at].trim_end().to_owned())),
        };
        if let Some((at, text)) = picked {
            picks.push((at, text));
            next = at + 1;
        }
    }
    if picks.is_empty() {
        return output.iter().map(|l| l.trim_end().to_owned()).collect();
    }
    let mut lines = Vec::new();
    let mut expected = 0;
    for (at, text) in picks {
        if at != expected {
            lines.push("...".to_owned());
        }
        lines.push(text);
        expected = at + 1;
    }
    if expected != output.len() {
        lines.push("...".to_owned());
    }
    lines
}

#[test]
fn the_readmes_main_job_output_is_the_binarys() {
    // GIVEN the README's quote of the main job's output
    // WHEN the main job runs as the README says (offline model, default settings)
    let out = main_job(&[], None);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let output: Vec<&str> = stdout.lines().collect();
    // THEN every quoted line is the output's, in order
    let _guard = README.lock().unwrap_or_else(|e| e.into_inner());
    let block = Block::find(&std::fs::read_to_string(readme_path()).unwrap(), "run");
    if let Err(e) = check_run_block(&block, &output) {
        if updating() {
            rewrite("run", &updated_run_block(&block, &output));
            return;
        }
        panic!(
            "{e}\nThe README's quote of the main job has drifted; update it with `{UPDATE_HINT}`."
        );
    }
}

// ---- the example stream ---------------------------------------------------------------------

/// A frame as the README quotes it.
struct Quoted {
    /// Index in the block of its `id:` line.
    at: usize,
    id: u64,
    event: String,
    data: String,
}

fn quoted_frames(block: &Block) -> Vec<Quoted> {
    let mut frames: Vec<Quoted> = Vec::new();
    for (k, line) in block.lines.iter().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with(':') || is_elision(line) {
            continue;
        }
        let bad = || {
            format!(
                "README.md line {}: not an SSE line: {line:?}",
                block.line_no(k)
            )
        };
        let (field, value) = line.split_once(": ").unwrap_or_else(|| panic!("{}", bad()));
        match field {
            "id" => frames.push(Quoted {
                at: k,
                id: value.parse().unwrap_or_else(|_| panic!("{}", bad())),
                event: String::new(),
                data: String::new(),
            }),
            "event" | "data" => {
                let frame = frames.last_mut().unwrap_or_else(|| panic!("{}", bad()));
                let slot = if field == "event" {
                    &mut frame.event
                } else {
                    &mut frame.data
                };
                *slot = value.to_owned();
            }
            _ => panic!("{}", bad()),
        }
    }
    frames
}

/// A frame of the run: its id, event, data as sent and data parsed.
struct Sent {
    id: u64,
    event: String,
    raw: String,
    data: Value,
}

fn sent_frames(sse: &str) -> Vec<Sent> {
    SseParser::default()
        .push(sse)
        .into_iter()
        .map(|f| Sent {
            id: f.id.expect("an id").parse().expect("a numeric id"),
            event: f.event.expect("an event"),
            data: serde_json::from_str(&f.data).expect("JSON data"),
            raw: f.data,
        })
        .collect()
}

fn normalised(data: Value) -> Value {
    golden::normalise([data]).remove(0)
}

/// Whether the run's frame is the quoted one (an error saying how not, when it is not).
fn same_frame(block: &Block, q: &Quoted, sent: &Sent) -> Result<(), String> {
    let line = block.line_no(q.at);
    if sent.event != q.event {
        return Err(format!(
            "README.md line {line}: frame {} is `event: {}`, the run's frame {} is `event: {}`",
            q.id, q.event, q.id, sent.event
        ));
    }
    if q.event == "delta" {
        return Ok(()); // how a draft is cut into deltas depends on timing
    }
    let quoted: Value = serde_json::from_str(&q.data).map_err(|e| {
        format!(
            "README.md line {line}: the data of frame {} is not whole JSON ({e}); quote frames whole",
            q.id
        )
    })?;
    let (quoted, seen) = (normalised(quoted), normalised(sent.data.clone()));
    if quoted != seen {
        return Err(format!(
            "README.md line {line}: frame {} is not the run's frame {}\n  README: {quoted}\n  run:    {seen}",
            q.id, q.id
        ));
    }
    Ok(())
}

fn check_stream_block(block: &Block, run: &[Sent]) -> Result<(), String> {
    let quoted = quoted_frames(block);
    if quoted.is_empty() {
        return Err("README.md: the `stream` block quotes no frame".into());
    }
    for q in &quoted {
        let sent = run.iter().find(|s| s.id == q.id).ok_or_else(|| {
            format!(
                "README.md line {}: frame {}, but the run has {} frames",
                block.line_no(q.at),
                q.id,
                run.len()
            )
        })?;
        same_frame(block, q, sent)?;
    }
    Ok(())
}

/// (path, value) of every leaf, for telling which frame a stale quote was.
fn leaves(value: &Value, path: String, out: &mut BTreeSet<(String, String)>) {
    match value {
        Value::Object(map) => map
            .iter()
            .for_each(|(k, v)| leaves(v, format!("{path}/{k}"), out)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| leaves(v, format!("{path}/{i}"), out)),
        leaf => {
            out.insert((path, leaf.to_string()));
        }
    }
}

/// The run's frame a quote stands for, and whether it is the quote unchanged: the frame with
/// its id while it still matches, else the frame of the same event most like it (nearest by id
/// on a tie).
fn pick(block: &Block, q: &Quoted, run: &[Sent]) -> Option<(usize, bool)> {
    if let Some(i) = run.iter().position(|s| s.id == q.id)
        && same_frame(block, q, &run[i]).is_ok()
    {
        return Some((i, true));
    }
    let mut want = BTreeSet::new();
    if let Ok(v) = serde_json::from_str::<Value>(&q.data) {
        leaves(&normalised(v), String::new(), &mut want);
    }
    run.iter()
        .enumerate()
        .filter(|(_, s)| s.event == q.event)
        .max_by_key(|(_, s)| {
            let mut have = BTreeSet::new();
            leaves(&normalised(s.data.clone()), String::new(), &mut have);
            let alike = want.intersection(&have).count();
            (alike, std::cmp::Reverse(s.id.abs_diff(q.id)))
        })
        .map(|(i, _)| (i, false))
}

/// The run and correlation ids of a frame's data.
fn ids_of(data: &str) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(data).ok()?;
    Some((
        v["runId"].as_str()?.to_owned(),
        v["correlationId"].as_str()?.to_owned(),
    ))
}

/// The block again from `run`: a quoted frame still there is kept as the README has it; one
/// that changed is the run's, written with the README's run and correlation ids so that the
/// example stays one run.
fn updated_stream_block(block: &Block, run: &[Sent]) -> Vec<String> {
    let quoted = quoted_frames(block);
    let readme_ids = quoted.iter().find_map(|q| ids_of(&q.data));
    let mut frames: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for q in &quoted {
        let Some((i, unchanged)) = pick(block, q, run) else {
            continue;
        };
        let s = &run[i];
        let data = match (unchanged, &readme_ids, ids_of(&s.raw)) {
            (true, _, _) => q.data.clone(),
            (false, Some((run_id, correlation)), Some((theirs, their_correlation))) => s
                .raw
                .replace(&theirs, run_id)
                .replace(&their_correlation, correlation),
            _ => s.raw.clone(),
        };
        frames.entry(s.id).or_insert((s.event.clone(), data));
    }
    let mut lines = vec![":".to_owned()];
    for (id, (event, data)) in frames {
        lines.push(String::new());
        lines.push(format!("id: {id}"));
        lines.push(format!("event: {event}"));
        lines.push(format!("data: {data}"));
    }
    lines
}

/// The main job's frames, as `orchestrator run --json` prints them with no pause between the
/// offline model's chunks (as the README says): each draft comes as the fewest deltas.
fn stream_run() -> Vec<Sent> {
    let out = main_job(&["--json"], Some("0"));
    sent_frames(&String::from_utf8(out.stdout).unwrap())
}

#[test]
fn the_readmes_example_stream_is_the_binarys() {
    let _guard = README.lock().unwrap_or_else(|e| e.into_inner());
    let block = Block::find(&std::fs::read_to_string(readme_path()).unwrap(), "stream");
    // A 50 ms stall of this machine mid-draft cuts one more delta, and every id after it moves:
    // a quote that matches any of three runs is the run's.
    let mut runs = Vec::new();
    for _ in 0..3 {
        // WHEN the main job runs with --json
        let run = stream_run();
        // THEN every quoted frame is the run's frame with its id
        match check_stream_block(&block, &run) {
            Ok(()) => return,
            Err(e) => runs.push((run, e)),
        }
    }
    if updating() {
        // The run cut into the fewest frames is the one the README describes.
        let (run, _) = runs.iter().min_by_key(|(run, _)| run.len()).unwrap();
        rewrite("stream", &updated_stream_block(&block, run));
        return;
    }
    let (_, e) = runs.pop().unwrap();
    panic!("{e}\nThe README's example stream has drifted; update it with `{UPDATE_HINT}`.");
}

// ---- exit codes -----------------------------------------------------------------------------

/// The codes of the README's exit code table (the first table under the `Exit codes` heading).
fn readme_exit_codes() -> Vec<u8> {
    let text = std::fs::read_to_string(readme_path()).unwrap();
    let heading = |l: &&str| l.starts_with('#') && l.trim_start_matches('#').trim() == "Exit codes";
    text.lines()
        .skip_while(|l| !heading(l))
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|row| row.split('|').nth(1)?.trim().parse().ok())
        .collect()
}

#[test]
fn every_exit_code_the_readme_lists_is_one_the_binary_exits_with() {
    // GIVEN the README's exit code table
    let codes = readme_exit_codes();
    // (3, another live process driving a resumed run, is tests/ownership.rs's.)
    assert_eq!(
        codes,
        [0, 1, 2, 3, 4, 5],
        "README.md's exit code table lists other codes than the binary's"
    );
    let objective = golden::OBJECTIVE;
    let outcomes: [(u8, &str, Vec<&str>); 5] = [
        (0, "a completed run", vec!["run", objective]),
        (
            1,
            "a run out of budget",
            vec!["run", objective, "--max-steps", "1"],
        ),
        (2, "bad input", vec!["run", ""]),
        (
            4,
            "a run below the quality gate",
            vec!["run", objective, "--max-revisions", "0"],
        ),
        (
            5,
            "a run paused for approval",
            vec!["run", objective, "--require-approval"],
        ),
    ];
    for (code, what, args) in outcomes {
        // WHEN the binary ends that way
        let dir = tempfile::tempdir().unwrap();
        let out = orchestrator(&dir.path().join("runs.db"), &args, Some("0"));
        // THEN it exits with the code the README gives
        assert_eq!(
            out.status.code(),
            Some(i32::from(code)),
            "{what} ({args:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
