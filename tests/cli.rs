//! The real `dagstream` binary: `serve` finds its site, answers, and shuts down cleanly on
//! SIGTERM, closing open streams with 1001 instead of hanging on them.

#![cfg(all(feature = "ssr", unix))]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A `dagstream serve` child process on a free port, killed if the test ends early.
struct Served {
    child: Child,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dagstream-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Starts the binary on port 0 and reads the address it announces.
fn serve(site_root: &std::path::Path, data: &std::path::Path) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dagstream"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(data)
        .arg("--site-root")
        .arg(site_root)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("the server announces its address").expect("readable output");
        if let Some(rest) = line.split("dashboard on http://").nth(1) {
            break rest.split_whitespace().next().expect("an address").to_owned();
        }
    };
    // Keep draining the output so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Served { child, addr }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

fn http_post(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(stream, "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

#[tokio::test]
async fn serve_answers_and_sigterm_closes_streams_and_exits_cleanly() {
    let site = temp_dir("site");
    std::fs::create_dir_all(site.join("pkg")).expect("pkg dir");
    std::fs::write(site.join("pkg/dagstream.js"), "// built site stand-in").expect("site file");
    let data = temp_dir("data").join("nested");
    let mut served = serve(&site, &data);
    assert!(data.is_dir(), "the data directory is created");

    assert!(http_get(&served.addr, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(http_get(&served.addr, "/pkg/dagstream.js").contains("built site stand-in"), "serves the site");
    let started = http_post(&served.addr, "/api/dags?example=demo");
    let dag_id = started.split("\"dag_id\":\"").nth(1).and_then(|s| s.split('"').next()).expect("a dag_id").to_owned();

    let url = format!("ws://{}/api/dags/{dag_id}/stream", served.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("stream connects");
    assert!(matches!(socket.next().await, Some(Ok(Message::Text(_)))), "snapshot first");

    let status = Command::new("kill").args(["-TERM", &served.child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());

    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| f.code);
            }
        }
        None
    })
    .await
    .expect("the stream is closed promptly");
    assert_eq!(closed, Some(CloseCode::Away), "streams are closed with 1001 going away");

    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = served.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "the server exits after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "clean exit, got {exit:?}");
}

#[test]
fn serve_without_a_built_site_says_what_is_missing() {
    let empty = temp_dir("nosite");
    let output = Command::new(env!("CARGO_BIN_EXE_dagstream"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(empty.join("data"))
        .arg("--site-root")
        .arg(&empty)
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pkg/dagstream.js"), "{stderr}");
    assert!(stderr.contains("--site-root"), "{stderr}");
}

fn spec_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = temp_dir(name);
    let path = dir.join("spec.toml");
    std::fs::write(&path, text).expect("write spec");
    path
}

fn dagstream(args: &[&str], spec: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dagstream"));
    command.args(args).arg(spec).arg("--data").arg(spec.with_file_name("data"));
    command
}

const GATED: &str = r#"
name = "cli"
[[nodes]]
id = "work"
kind = "simulate"
duration = "50ms"
cost = 0.1
[[nodes]]
id = "review"
kind = "gate"
needs = ["work"]
[[nodes]]
id = "after"
kind = "simulate"
needs = ["review"]
"#;

#[test]
fn validate_exits_0_for_a_valid_spec_and_2_with_the_reason_for_an_invalid_one() {
    let valid = spec_file("validate-ok", GATED);
    let output = Command::new(env!("CARGO_BIN_EXE_dagstream")).arg("validate").arg(&valid).output().expect("runs");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok (3 nodes"));

    let invalid = spec_file("validate-bad", &GATED.replace("needs = [\"work\"]", "needs = [\"wrok\"]"));
    let output = Command::new(env!("CARGO_BIN_EXE_dagstream")).arg("validate").arg(&invalid).output().expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\"review\"") && stderr.contains("\"wrok\""), "{stderr}");
}

#[test]
fn run_with_approve_all_completes_with_exit_0() {
    let spec = spec_file("run-ok", GATED);
    let output = dagstream(&["run", "--approve-all"], &spec).output().expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("run completed: 3 of 3 nodes done"), "{stdout}");
}

#[test]
fn run_asks_gates_on_stdin_and_a_rejection_exits_1() {
    let spec = spec_file("run-reject", GATED);
    let mut child = dagstream(&["run"], &spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("readable");
        let asked = line.contains("? gate review");
        seen.push(line);
        if asked {
            writeln!(stdin, "maybe").expect("answer");
            writeln!(stdin, "reject not this time").expect("answer");
            break;
        }
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("exits");
    assert_eq!(status.code(), Some(1), "{seen:?}\n{rest:?}");
    let all = rest.join("\n");
    assert!(all.contains("answer approve, reject, or modify"), "a bad answer is explained: {all}");
    assert!(all.contains("run failed"), "{all}");
}

#[test]
fn run_of_a_failing_command_exits_1_and_ctrl_c_exits_130() {
    let failing =
        spec_file("run-fail", "name = \"f\"\n[[nodes]]\nid = \"boom\"\nkind = \"command\"\nrun = \"exit 4\"\n");
    let output = dagstream(&["run"], &failing).output().expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("exit status 4"));

    let long = spec_file(
        "run-cancel",
        "name = \"l\"\n[[nodes]]\nid = \"long\"\nkind = \"command\"\nrun = \"echo started; sleep 30\"\n",
    );
    let mut child = dagstream(&["run"], &long).stdout(Stdio::piped()).spawn().expect("runs");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("long | started"))), "the command ran");
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    std::thread::spawn(move || for _ in lines {});
    let status = child.wait().expect("exits");
    assert_eq!(status.code(), Some(130));
}
