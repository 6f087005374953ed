//! The process of a command node, one attempt at a time: `sh -c` in its own process group with a scrubbed
//! environment, output streamed line by line (cut and rate-limited), the report file tailed
//! while it runs, timeouts and cancellation that take the whole process group down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncSeekExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::node::{AttemptError, NodeMsg};
use super::spec::NodeFile;
use crate::protocol::LogStream;

/// Longest output line kept; the rest of a longer line is cut.
pub const MAX_LINE_BYTES: usize = 4096;
/// Output lines per second and stream passed on; more are dropped and counted.
pub const MAX_LINES_PER_SECOND: u32 = 200;
/// How often the report file is read while the node runs.
const REPORT_POLL: Duration = Duration::from_millis(100);
/// Variables a command inherits from the server; everything else is scrubbed.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER"];

/// Everything one attempt of a command needs.
pub struct CommandAttempt<'a> {
    pub node: usize,
    pub node_id: &'a str,
    pub attempt: u32,
    pub run: &'a str,
    pub env: &'a BTreeMap<String, String>,
    /// The run's working directory; the command runs in it.
    pub workdir: &'a Path,
    /// Outputs of the upstream nodes, by id, for `DAGSTREAM_INPUTS`.
    pub inputs: &'a Map<String, Value>,
    /// Set when a gate sent work back, for `DAGSTREAM_FEEDBACK`.
    pub feedback: Option<&'a str>,
    pub timeout: Option<Duration>,
    /// How long a cancelled command gets between SIGTERM and SIGKILL.
    pub cancel_grace: Duration,
}

/// Runs one attempt to its end. `Ok` when the command exited 0.
pub async fn run(
    attempt: CommandAttempt<'_>,
    events: &mpsc::Sender<NodeMsg>,
    cancel: &CancellationToken,
) -> Result<(), AttemptError> {
    let files = AttemptFiles::prepare(&attempt).await.map_err(AttemptError::Failed)?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(attempt.run)
        .current_dir(attempt.workdir)
        .env_clear()
        .envs(INHERITED_ENV.iter().filter_map(|name| std::env::var(name).ok().map(|value| (*name, value))))
        .envs(attempt.env)
        .env("DAGSTREAM_NODE", attempt.node_id)
        .env("DAGSTREAM_ATTEMPT", attempt.attempt.to_string())
        .env("DAGSTREAM_INPUTS", &files.inputs)
        .env("DAGSTREAM_REPORT", &files.report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(feedback) = attempt.feedback {
        command.env("DAGSTREAM_FEEDBACK", feedback);
    }
    let child = command.spawn().map_err(|e| AttemptError::Failed(format!("could not start the command: {e}")))?;
    // The child leads its own process group, so its pid is the group id.
    let group = child.id().map(|pid| Pid::from_raw(pid as i32));
    let mut child = Reaped { child: Some(child), group };
    let Some(process) = child.child.as_mut() else { return Err(AttemptError::Failed("no process".into())) };
    let stdout = process
        .stdout
        .take()
        .map(|out| tokio::spawn(stream_lines(out, LogStream::Stdout, attempt.node, events.clone())));
    let stderr = process
        .stderr
        .take()
        .map(|err| tokio::spawn(stream_lines(err, LogStream::Stderr, attempt.node, events.clone())));
    let mut report = ReportTail::new(files.report.clone(), attempt.node);
    let mut poll = tokio::time::interval(REPORT_POLL);
    let deadline = attempt.timeout.map(|t| Instant::now() + t);

    let ending = loop {
        tokio::select! {
            status = process.wait() => break match status {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(AttemptError::Failed(describe_exit(status))),
                Err(e) => Err(AttemptError::Failed(format!("could not wait for the command: {e}"))),
            },
            _ = poll.tick() => report.read_new(events).await,
            _ = sleep_until(deadline) => {
                signal_group(group, Signal::SIGKILL);
                let _ = process.wait().await;
                let limit = attempt.timeout.map(|t| humantime::format_duration(t).to_string()).unwrap_or_default();
                break Err(AttemptError::Failed(format!("timed out after {limit}; its process group was killed")));
            }
            _ = cancel.cancelled() => {
                signal_group(group, Signal::SIGTERM);
                if tokio::time::timeout(attempt.cancel_grace, process.wait()).await.is_err() {
                    signal_group(group, Signal::SIGKILL);
                    let _ = process.wait().await;
                }
                break Err(AttemptError::Cancelled);
            }
        }
    };
    // Every ending above waited for the process.
    child.child = None;
    // Nothing the command started may outlive it: take down what is left of its group.
    signal_group(group, Signal::SIGKILL);
    for reader in [stdout, stderr].into_iter().flatten() {
        let _ = reader.await;
    }
    report.read_new(events).await;
    ending
}

/// The command's process until it has been waited for. An attempt dropped half way (its node
/// task aborted) drops this: the group is killed and the process waited for on the runtime, so
/// it never stays a zombie under the server.
struct Reaped {
    child: Option<tokio::process::Child>,
    group: Option<Pid>,
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        signal_group(self.group, Signal::SIGKILL);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = child.wait().await;
            });
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

fn signal_group(group: Option<Pid>, signal: Signal) {
    if let Some(group) = group {
        // ESRCH (the group is already gone) is the expected case after a clean exit.
        let _ = killpg(group, signal);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The files an attempt hands to its command.
struct AttemptFiles {
    inputs: PathBuf,
    report: PathBuf,
}

impl AttemptFiles {
    async fn prepare(attempt: &CommandAttempt<'_>) -> Result<Self, String> {
        let dir = attempt.workdir.join(".dagstream");
        tokio::fs::create_dir_all(&dir).await.map_err(|e| format!("could not create {}: {e}", dir.display()))?;
        let inputs = dir.join(format!("{}.inputs.json", attempt.node_id));
        let report = dir.join(format!("{}.{}.report.jsonl", attempt.node_id, attempt.attempt));
        let json = serde_json::to_vec_pretty(attempt.inputs).map_err(|e| format!("could not encode inputs: {e}"))?;
        tokio::fs::write(&inputs, json).await.map_err(|e| format!("could not write {}: {e}", inputs.display()))?;
        tokio::fs::write(&report, b"").await.map_err(|e| format!("could not create {}: {e}", report.display()))?;
        Ok(AttemptFiles { inputs, report })
    }
}

/// Reads `source` line by line and sends each as a log line: lines longer than
/// [`MAX_LINE_BYTES`] are cut, and beyond [`MAX_LINES_PER_SECOND`] lines are dropped with a note.
/// Memory stays bounded by one line whatever the command prints.
async fn stream_lines(source: impl AsyncRead + Unpin, stream: LogStream, node: usize, events: mpsc::Sender<NodeMsg>) {
    let mut reader = BufReader::new(source);
    let mut limiter = LogLineRate::new(MAX_LINES_PER_SECOND);
    loop {
        let Some(line) = read_bounded_line(&mut reader).await else { break };
        match limiter.admit(Instant::now()) {
            Admit::Yes { dropped_before: 0 } => {}
            Admit::Yes { dropped_before } => {
                let note =
                    format!("[dagstream: {dropped_before} lines dropped, more than {MAX_LINES_PER_SECOND} per second]");
                if events.send(NodeMsg::Log { node, stream, line: note }).await.is_err() {
                    return;
                }
            }
            Admit::No => continue,
        }
        if events.send(NodeMsg::Log { node, stream, line }).await.is_err() {
            return;
        }
    }
    if limiter.dropped > 0 {
        let note =
            format!("[dagstream: {} lines dropped, more than {MAX_LINES_PER_SECOND} per second]", limiter.dropped);
        let _ = events.send(NodeMsg::Log { node, stream, line: note }).await;
    }
}

/// The next line without its newline, cut to [`MAX_LINE_BYTES`]; `None` at the end.
async fn read_bounded_line<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> Option<String> {
    let mut line = Vec::new();
    let mut cut = 0usize;
    loop {
        let buffer = match reader.fill_buf().await {
            Ok(buffer) => buffer,
            Err(_) => return None,
        };
        if buffer.is_empty() {
            return (!line.is_empty() || cut > 0).then(|| finish_line(line, cut));
        }
        let (chunk, found_newline) = match buffer.iter().position(|&b| b == b'\n') {
            Some(at) => (&buffer[..at], true),
            None => (buffer, false),
        };
        let room = MAX_LINE_BYTES.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        cut += chunk.len().saturating_sub(room);
        let used = chunk.len() + usize::from(found_newline);
        reader.consume(used);
        if found_newline {
            return Some(finish_line(line, cut));
        }
    }
}

fn finish_line(mut line: Vec<u8>, cut: usize) -> String {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let mut text = String::from_utf8_lossy(&line).into_owned();
    if cut > 0 {
        text.push_str(&format!(" [dagstream: {cut} more bytes cut]"));
    }
    text
}

/// How many output lines of a command are kept per one-second window (the rest are counted and
/// dropped with a note).
struct LogLineRate {
    per_second: u32,
    window_start: Option<Instant>,
    in_window: u32,
    /// Dropped since the last admitted line.
    dropped: u64,
}

enum Admit {
    Yes { dropped_before: u64 },
    No,
}

impl LogLineRate {
    fn new(per_second: u32) -> Self {
        LogLineRate { per_second, window_start: None, in_window: 0, dropped: 0 }
    }

    fn admit(&mut self, now: Instant) -> Admit {
        let fresh = self.window_start.is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1));
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= self.per_second {
            self.dropped += 1;
            return Admit::No;
        }
        self.in_window += 1;
        Admit::Yes { dropped_before: std::mem::take(&mut self.dropped) }
    }
}

/// One line of a report file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    /// Adds to the node's cost.
    Cost(f64),
    /// Adds to the node's token counts.
    Tokens { tokens_in: u64, tokens_out: u64 },
    /// Sets the node's output.
    Output(Value),
    /// Adds a node after the given ones.
    AddNode { node: Box<NodeFile>, after: Vec<String> },
    /// Adds an edge.
    AddEdge { from: String, to: String },
}

/// A report line as written: any of these fields, at least one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportLine {
    cost: Option<f64>,
    tokens_in: Option<u64>,
    tokens_out: Option<u64>,
    output: Option<Value>,
    add_node: Option<Box<NodeFile>>,
    after: Option<Vec<String>>,
    add_edge: Option<EdgeRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeRef {
    from: String,
    to: String,
}

/// Parses one report line into what it says, in the order: cost, tokens, output, mutations.
pub fn parse_report(line: &str) -> Result<Vec<Report>, String> {
    let parsed: ReportLine = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let mut reports = Vec::new();
    if let Some(cost) = parsed.cost {
        if !cost.is_finite() || cost < 0.0 {
            return Err(format!("cost must be 0 or more, not {cost}"));
        }
        reports.push(Report::Cost(cost));
    }
    if parsed.tokens_in.is_some() || parsed.tokens_out.is_some() {
        reports.push(Report::Tokens {
            tokens_in: parsed.tokens_in.unwrap_or(0),
            tokens_out: parsed.tokens_out.unwrap_or(0),
        });
    }
    if let Some(output) = parsed.output {
        reports.push(Report::Output(output));
    }
    match (parsed.add_node, parsed.after) {
        (Some(node), after) => reports.push(Report::AddNode { node, after: after.unwrap_or_default() }),
        (None, Some(_)) => return Err("\"after\" belongs to an \"add_node\"".into()),
        (None, None) => {}
    }
    if let Some(EdgeRef { from, to }) = parsed.add_edge {
        reports.push(Report::AddEdge { from, to });
    }
    if reports.is_empty() {
        return Err("a report line needs one of cost, tokens_in, tokens_out, output, add_node, add_edge".into());
    }
    Ok(reports)
}

/// Follows a report file: reads what was appended since the last read, complete lines only.
struct ReportTail {
    path: PathBuf,
    node: usize,
    /// Bytes consumed so far.
    offset: u64,
    /// Lines consumed so far, for error messages.
    line_number: usize,
    /// An incomplete last line, kept until its newline arrives.
    partial: Vec<u8>,
}

impl ReportTail {
    fn new(path: PathBuf, node: usize) -> Self {
        ReportTail { path, node, offset: 0, line_number: 0, partial: Vec::new() }
    }

    async fn read_new(&mut self, events: &mpsc::Sender<NodeMsg>) {
        let Ok(mut file) = tokio::fs::File::open(&self.path).await else { return };
        if file.seek(std::io::SeekFrom::Start(self.offset)).await.is_err() {
            return;
        }
        // Bounded per read: a node cannot make the engine buffer an unbounded report at once.
        let mut fresh = Vec::new();
        let Ok(read) = (&mut file).take(1 << 20).read_to_end(&mut fresh).await else { return };
        self.offset += read as u64;
        self.partial.extend_from_slice(&fresh);
        while let Some(at) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=at).collect();
            self.line_number += 1;
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).trim().to_owned();
            if text.is_empty() {
                continue;
            }
            let message = match parse_report(&text) {
                Ok(reports) => NodeMsg::Reports { node: self.node, reports },
                Err(problem) => NodeMsg::BadReport { node: self.node, line: self.line_number, problem },
            };
            if events.send(message).await.is_err() {
                return;
            }
        }
        if self.partial.len() > MAX_LINE_BYTES * 16 {
            self.partial.clear();
            self.line_number += 1;
            let problem = "line longer than 64 KiB ignored".to_owned();
            let _ = events.send(NodeMsg::BadReport { node: self.node, line: self.line_number, problem }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_parse_into_what_they_say() {
        assert_eq!(parse_report(r#"{"cost": 0.12}"#), Ok(vec![Report::Cost(0.12)]));
        assert_eq!(
            parse_report(r#"{"tokens_in": 100, "tokens_out": 20}"#),
            Ok(vec![Report::Tokens { tokens_in: 100, tokens_out: 20 }])
        );
        assert_eq!(parse_report(r#"{"output": {"n": 1}}"#), Ok(vec![Report::Output(serde_json::json!({"n": 1}))]));
        assert_eq!(
            parse_report(r#"{"add_edge": {"from": "a", "to": "b"}}"#),
            Ok(vec![Report::AddEdge { from: "a".into(), to: "b".into() }])
        );
        let added = parse_report(r#"{"add_node": {"id": "x", "kind": "simulate"}, "after": ["a"]}"#).expect("valid");
        assert!(
            matches!(&added[..], [Report::AddNode { node, after }] if node.id == "x" && after == &["a".to_string()])
        );
        for bad in
            ["", "{}", "[1]", r#"{"cost": -1}"#, r#"{"cost": "a lot"}"#, r#"{"costs": 1}"#, r#"{"after": ["a"]}"#]
        {
            assert!(parse_report(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_memory_stays_bounded() {
        let long = "x".repeat(MAX_LINE_BYTES + 100);
        let input = format!("short\r\n{long}\nlast");
        let mut reader = BufReader::new(input.as_bytes());
        assert_eq!(read_bounded_line(&mut reader).await.as_deref(), Some("short"));
        let cut = read_bounded_line(&mut reader).await.expect("a line");
        assert!(cut.starts_with(&"x".repeat(MAX_LINE_BYTES)));
        assert!(cut.ends_with("[dagstream: 100 more bytes cut]"), "{}", &cut[MAX_LINE_BYTES..]);
        assert_eq!(read_bounded_line(&mut reader).await.as_deref(), Some("last"));
        assert_eq!(read_bounded_line(&mut reader).await, None);
    }

    #[test]
    fn the_rate_limit_drops_and_counts_then_reports() {
        let start = Instant::now();
        let mut limit = LogLineRate::new(2);
        assert!(matches!(limit.admit(start), Admit::Yes { dropped_before: 0 }));
        assert!(matches!(limit.admit(start), Admit::Yes { dropped_before: 0 }));
        assert!(matches!(limit.admit(start), Admit::No));
        assert!(matches!(limit.admit(start), Admit::No));
        let later = start + Duration::from_secs(1);
        assert!(matches!(limit.admit(later), Admit::Yes { dropped_before: 2 }));
    }
}
