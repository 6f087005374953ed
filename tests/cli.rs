//! The real `dagstream` binary: `serve` finds its site, answers, and shuts down cleanly on
//! SIGTERM, closing open streams with 1001 instead of hanging on them.

#![cfg(all(feature = "ssr", unix))]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Served, dag_id_of, http_get, http_post, stub_site, temp_dir};
use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn serve_answers_and_sigterm_closes_streams_and_exits_cleanly() {
    let site = stub_site("site");
    let data = temp_dir("data").join("nested");
    let mut served = Served::start(&site, &data);
    assert!(data.is_dir(), "the data directory is created");
    let status = std::fs::read_to_string(format!("/proc/{}/status", served.pid())).expect("the server's status");
    assert!(
        status.lines().any(|line| line.split_whitespace().eq(["THP_enabled:", "0"])),
        "the server keeps its memory in small pages (no 2 MiB page zeroed mid fan-out): {status}"
    );

    assert!(http_get(&served.addr, "/healthz").starts_with("HTTP/1.1 200"));
    let site_file = http_get(&served.addr, "/pkg/dagstream.js");
    assert!(site_file.contains("built site stand-in"), "serves the site");
    assert!(
        site_file.to_ascii_lowercase().contains("\r\ncache-control: no-cache\r\n"),
        "site files are revalidated on every load: {site_file}"
    );
    assert!(!http_get(&served.addr, "/healthz").to_ascii_lowercase().contains("cache-control: no-cache"));
    // Revalidation is cheap: unchanged since the copy the browser has, the answer is a bodiless 304.
    let last_modified = site_file
        .lines()
        .find_map(|line| line.strip_prefix("last-modified: "))
        .expect("site files carry Last-Modified")
        .trim();
    let revalidated = common::raw_http(
        &served.addr,
        &format!(
            "GET /pkg/dagstream.js HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: {last_modified}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(common::status_of(&revalidated), 304, "{revalidated}");
    let dag_id = dag_id_of(&http_post(&served.addr, "/api/dags?example=demo"));

    let url = format!("ws://{}/api/dags/{dag_id}/stream", served.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(common::ws_request(&url)).await.expect("stream connects");
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

/// `run --database URL` stores the run where a server on that database finds it, ended, with
/// its decision; on PostgreSQL as on SQLite.
#[rstest::rstest]
#[case::sqlite(common::Backend::Sqlite)]
#[case::postgres(common::Backend::Postgres)]
#[tokio::test]
async fn run_with_a_database_stores_the_run(#[case] backend: common::Backend) {
    let database = common::Scratch::new(backend, "run_stored").await;
    let spec = spec_file(&format!("run-stored-{backend:?}"), GATED);
    let output = dagstream(&["run", "--approve-all", "--database", &database.url()], &spec).output().expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let store = dagstream::store::open(&database.database, 1).await.expect("opens");
    let runs = store.runs().await.expect("runs");
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].name.as_str(), runs[0].state.as_str()), ("cli", "completed"));
    let decisions = store.decisions(&runs[0].dag_id).await.expect("decisions");
    assert_eq!(decisions.len(), 1, "the gate's approval is recorded");
    let events = store.events(&runs[0].dag_id, 0, u64::MAX).await.expect("events");
    assert!(events.last().is_some_and(|e| e.contains("execution_complete")), "the whole log, to its end");
}

/// Runs `spec` with `dagstream run`, answers `answers` once the question of `gate` shows, and
/// answers the exit status and everything printed.
fn answer_at_the_prompt(spec: &std::path::Path, gate: &str, answers: &[&str]) -> (Option<i32>, String) {
    let mut child = dagstream(&["run"], spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    // A run that never asks would wait for ever: kill it after a minute, so the test fails.
    let pid = child.id().to_string();
    let (finished, watchdog) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watchdog.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    });
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("readable");
        let asked = line.contains(&format!("? gate {gate}"));
        seen.push(line);
        if asked {
            break;
        }
    }
    for answer in answers {
        writeln!(stdin, "{answer}").expect("answer");
    }
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().expect("exits");
    let _ = finished.send(());
    (status.code(), seen.join("\n"))
}

#[test]
fn run_asks_gates_on_stdin_and_a_rejection_exits_1() {
    let spec = spec_file("run-reject", GATED);
    let (status, all) = answer_at_the_prompt(&spec, "review", &["maybe", "reject not this time"]);
    assert_eq!(status, Some(1), "{all}");
    assert!(all.contains("answer approve, reject, or modify"), "a bad answer is explained: {all}");
    assert!(all.contains("run failed"), "{all}");
}

#[test]
fn run_asks_a_quorum_gate_with_a_form_and_takes_each_persons_answer() {
    let spec = spec_file(
        "run-quorum",
        r#"
name = "quorum"
[[nodes]]
id = "ship"
kind = "gate"
title = "Ship it?"
approvers = ["ana", "bo"]
approvals = 2
inputs = [{ name = "channel", type = "enum", options = ["stable", "beta"] }]
[[nodes]]
id = "after"
kind = "simulate"
needs = ["ship"]
"#,
    );
    let answers = [
        "approve channel=stable",
        "approve channel=nightly as ana",
        "approve channel=stable as ana",
        "approve channel=stable as ana",
        "approve channel=beta as bo",
    ];
    let (status, all) = answer_at_the_prompt(&spec, "ship", &answers);
    assert_eq!(status, Some(0), "{all}");
    assert!(all.contains("decided by ana, bo (2 approval(s)"), "the prompt says who decides: {all}");
    assert!(all.contains("form: channel (stable | beta)"), "and the form: {all}");
    assert!(all.contains("terminal may not decide gate \"ship\""), "an unnamed answer is refused: {all}");
    assert!(all.contains("field \"channel\": \"nightly\" is not one of stable, beta"), "{all}");
    assert!(all.contains("ana already approved"), "the same person counts once: {all}");
    assert!(all.contains("approved by ana: 1 more needed"), "{all}");
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

/// `user add --database URL` keeps the user in the database, where every server on it finds
/// them; a name is taken once.
#[rstest::rstest]
#[case::sqlite(common::Backend::Sqlite)]
#[case::postgres(common::Backend::Postgres)]
#[tokio::test]
async fn user_add_with_a_database_is_known_to_a_server_on_it(#[case] backend: common::Backend) {
    let database = common::Scratch::new(backend, "users_db").await;
    let add = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_dagstream"))
            .args(["user", "add", name, "--role", "approver", "--database", &database.url()])
            .output()
            .expect("runs")
    };
    let output = add("ana");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token =
        stdout.lines().find_map(|l| l.split("token (shown once, only its hash is kept): ").nth(1)).expect("token");
    let again = add("ana");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already a user called \"ana\""));
    let site = stub_site(&format!("users-db-site-{backend:?}"));
    let data = temp_dir(&format!("users-db-data-{backend:?}"));
    let served = common::Served::start_on(&site, &data, Some(&database.url()));
    let me = common::http_as(&served.addr, token, "GET", "/api/me", None, "");
    assert!(
        me.starts_with("HTTP/1.1 200") && me.contains(r#""name":"ana""#) && me.contains(r#""role":"approver""#),
        "{me}"
    );

    // A user added while the server runs signs in without a restart, with a bearer token and
    // on the login page.
    let output = add("bo");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let token =
        stdout.lines().find_map(|l| l.split("token (shown once, only its hash is kept): ").nth(1)).expect("token");
    // Unknown tokens make the server read the database again at most once a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let me = common::http_as(&served.addr, token, "GET", "/api/me", None, "");
    assert!(me.starts_with("HTTP/1.1 200") && me.contains(r#""name":"bo""#), "{me}");
    let login = common::raw_http(
        &served.addr,
        &format!("GET /login?token={token} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", served.addr),
    );
    assert_eq!(common::status_of(&login), 303, "{login}");
    let wrong = common::http_as(&served.addr, "not-anyones-token-at-all", "GET", "/api/me", None, "");
    assert_eq!(common::status_of(&wrong), 401, "{wrong}");
}

#[test]
fn user_add_prints_a_token_once_stores_its_hash_and_serve_accepts_it() {
    let dir = temp_dir("users");
    let users = dir.join("users.toml");
    let add = |name: &str, role: &str| {
        Command::new(env!("CARGO_BIN_EXE_dagstream"))
            .args(["user", "add", name, "--role", role, "--users"])
            .arg(&users)
            .output()
            .expect("runs")
    };
    let output = add("ana", "approver");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let token =
        stdout.lines().find_map(|l| l.split("token (shown once, only its hash is kept): ").nth(1)).expect("token");
    let file = std::fs::read_to_string(&users).expect("users file");
    assert!(file.contains("name = \"ana\"") && file.contains("role = \"approver\""), "{file}");
    assert!(!file.contains(token), "only the hash is stored");
    assert!(!add("ana", "viewer").status.success(), "names are unique");
    assert!(!add("bo", "owner").status.success(), "roles are checked");

    let site = stub_site("users-site");
    let data = temp_dir("users-data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dagstream"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(&data)
        .arg("--site-root")
        .arg(&site)
        .arg("--users")
        .arg(&users)
        .env("RUST_LOG", "warn")
        .env_remove("DAGSTREAM_TOKEN")
        .stdout(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut addr = String::new();
    let mut link = String::new();
    while link.is_empty() {
        let line = lines.next().expect("output").expect("readable");
        if let Some(rest) = line.split("dashboard on http://").nth(1) {
            addr = rest.trim().to_owned();
        }
        if let Some(rest) = line.split("sign in as admin: ").nth(1) {
            link = rest.trim().to_owned();
        }
    }
    assert!(link.contains("/login?token="), "a one-click sign-in link: {link}");
    let me = |token: &str| {
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
        write!(
            stream,
            "GET /api/me HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut response = String::new();
        std::io::Read::read_to_string(&mut stream, &mut response).expect("read");
        response
    };
    let ana = me(token);
    assert!(
        ana.starts_with("HTTP/1.1 200") && ana.contains(r#""name":"ana""#) && ana.contains(r#""role":"approver""#),
        "{ana}"
    );
    let admin_token = link.split("token=").nth(1).expect("token in the link");
    assert!(me(admin_token).contains(r#""role":"admin""#));
    assert!(me("nope-nope-nope-nope").starts_with("HTTP/1.1 401"));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_fanout_bench_delivers_every_event_to_every_client_with_and_without_a_server() {
    for floor in [false, true] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dagstream"));
        command.args(["bench", "fanout", "--clients", "5", "--events", "40", "--rate", "200"]);
        if floor {
            command.arg("--floor");
        }
        let output = command.output().expect("the bench runs");
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{report}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(report.contains("delivered 200 messages"), "5 clients × 40 events: {report}");
        assert!(report.contains("missed events or were dropped: 0"), "{report}");
        assert!(report.contains("p99"), "{report}");
        assert_eq!(report.contains("KiB per connection"), !floor, "memory is measured only with a server: {report}");
    }
}

/// A WebSocket client on a plain TCP socket, frame by frame, so a test controls what is in
/// flight when the server closes (a library client reads and writes in its own order).
mod plain {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// Opens `path` with a hand-written upgrade as the admin; answers the socket after the 101.
    pub fn connect(addr: &str, path: &str) -> TcpStream {
        let mut socket = TcpStream::connect(addr).expect("connect");
        socket.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        socket.set_write_timeout(Some(Duration::from_secs(10))).expect("write timeout");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {}\r\n\r\n",
            super::common::TOKEN
        );
        socket.write_all(request.as_bytes()).expect("send the upgrade");
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).expect("read the upgrade's answer");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "upgraded: {head}");
        socket
    }

    /// A masked client frame: `opcode`, final, with `payload`.
    pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0x80 | opcode];
        match payload.len() {
            len @ 0..=125 => bytes.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                bytes.push(0x80 | 127);
                bytes.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        bytes.extend_from_slice(&mask);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        bytes
    }

    /// Reads server frames until a close frame: its code; `None` if the connection ended (or
    /// was reset) without one.
    pub fn close_code(socket: &mut TcpStream) -> Option<u16> {
        loop {
            let mut head = [0u8; 2];
            socket.read_exact(&mut head).ok()?;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut len = [0u8; 2];
                    socket.read_exact(&mut len).ok()?;
                    u64::from(u16::from_be_bytes(len))
                }
                127 => {
                    let mut len = [0u8; 8];
                    socket.read_exact(&mut len).ok()?;
                    u64::from_be_bytes(len)
                }
                len => u64::from(len),
            };
            let mut payload = vec![0u8; usize::try_from(len).ok()?];
            socket.read_exact(&mut payload).ok()?;
            if head[0] & 0x0f == 0x8 {
                return payload.get(..2).map(|code| u16::from_be_bytes([code[0], code[1]]));
            }
        }
    }
}

/// A message over 64 KiB is answered with a 1009 close frame that reaches the client every
/// time: whether the client then waits, keeps sending, or sent a frame too big to be read at
/// all. Against the real binary, 50 times in a row.
#[test]
fn an_oversized_message_is_closed_with_1009_every_time() {
    let site = stub_site("site-1009");
    let served = Served::start(&site, &temp_dir("data-1009"));
    let dag_id = dag_id_of(&http_post(&served.addr, "/api/dags?example=demo"));
    let path = format!("/api/dags/{dag_id}/stream");
    let oversized = plain::frame(0x1, &vec![b'x'; 65_537]);
    // Joined at the end: a sender blocked on a full socket ends when the server drops it.
    let mut senders = Vec::new();
    for attempt in 0..50 {
        let mut socket = plain::connect(&served.addr, &path);
        let mut writer = socket.try_clone().expect("a second handle");
        let still_sending = match attempt % 3 {
            // Sends the message, then waits for the answer.
            0 => {
                writer.write_all(&oversized).expect("send the message");
                None
            }
            // Keeps sending (more big messages, then small ones) while the server closes.
            1 => {
                let oversized = oversized.clone();
                Some(std::thread::spawn(move || {
                    for _ in 0..20 {
                        if writer.write_all(&oversized).is_err() {
                            return;
                        }
                    }
                    for _ in 0..2_000 {
                        if writer.write_all(&plain::frame(0x1, br#"{"type":"pause_execution"}"#)).is_err() {
                            return;
                        }
                    }
                }))
            }
            // A frame that says it is 8 MiB, too big to be read at all, still arriving.
            _ => Some(std::thread::spawn(move || {
                let mut header = plain::frame(0x1, &[]);
                header[1] = 0x80 | 127;
                header.splice(2..2, (8u64 << 20).to_be_bytes());
                if writer.write_all(&header).is_err() {
                    return;
                }
                let chunk = vec![b'y'; 64 * 1024];
                for _ in 0..128 {
                    if writer.write_all(&chunk).is_err() {
                        return;
                    }
                }
            })),
        };
        let code = plain::close_code(&mut socket);
        assert_eq!(code, Some(1009), "attempt {attempt} (case {}): the close frame arrives", attempt % 3);
        senders.extend(still_sending);
    }
    for sender in senders {
        sender.join().expect("the sending thread ends");
    }
}

/// `dagstream run` on a real terminal (a tmux pane of 120×40): after each answer to a gate the
/// screen shows one frame and the open question, never a stale frame above the new one.
#[test]
fn the_terminal_view_redraws_one_frame_around_its_questions() {
    let dir = temp_dir("terminal-view");
    let spec = dir.join("gated.toml");
    std::fs::write(
        &spec,
        "name = \"gated\"\n\
         [[nodes]]\nid = \"draft\"\nkind = \"simulate\"\nduration = \"300ms\"\ncost = 0.1\n\
         [[nodes]]\nid = \"check\"\nkind = \"simulate\"\nduration = \"200ms\"\n\
         [[nodes]]\nid = \"review\"\nkind = \"gate\"\nneeds = [\"draft\", \"check\"]\ntitle = \"Good?\"\nprompt = \"Look at the draft.\"\noptions = [\"approve\", \"reject\", \"modify\"]\n\
         [[nodes]]\nid = \"publish\"\nkind = \"simulate\"\nneeds = [\"review\"]\nduration = \"200ms\"\n",
    )
    .expect("spec written");
    let session = format!("dagstream-test-{}", std::process::id());
    // TERM: CI may run without one; the pane's own terminal is tmux's.
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &session])
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux runs")
    };
    let command = format!(
        "{} run {} --data {}; echo EXITED $?; sleep 30",
        env!("CARGO_BIN_EXE_dagstream"),
        spec.display(),
        dir.join("data").display()
    );
    /// Ends the test's tmux server however the test ends (a failed assertion included).
    struct KillServer(String);
    impl Drop for KillServer {
        fn drop(&mut self) {
            let _ = Command::new("tmux").args(["-L", &self.0, "kill-server"]).output();
        }
    }
    let _kill_server = KillServer(session.clone());
    let started = tmux(&["new-session", "-d", "-s", "view", "-x", "120", "-y", "40", &command]);
    assert!(started.status.success(), "tmux starts: {}", String::from_utf8_lossy(&started.stderr));
    let screen = || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "view"]).stdout).into_owned();
    let wait_for = |what: &str, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let shown = screen();
            if shown.matches(what).count() >= count {
                return shown;
            }
            assert!(Instant::now() < deadline, "waited for {what:?} ({count}×); the screen:\n{shown}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let one_frame = |shown: &str, moment: &str| {
        let headers = shown.lines().filter(|line| line.starts_with("gated ")).count();
        assert_eq!(headers, 1, "{moment}: one frame header on the screen:\n{shown}");
        let draft_lines = shown.lines().filter(|line| line.contains("draft completed")).count();
        assert!(draft_lines <= 1, "{moment}: no stale node lines:\n{shown}");
    };
    let asked = wait_for("answer>", 1);
    one_frame(&asked, "first question");
    tmux(&["send-keys", "-t", "view", "modify shorter please", "Enter"]);
    // Asked again: the decision is shown and a fresh prompt is open (the typed answer's own
    // line also reads `answer> modify …` until it is redrawn, so that one does not count).
    let asked_again = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let shown = screen();
            let open_prompt = shown.lines().any(|line| line.trim_end().ends_with("answer>"));
            if shown.contains("gate review: modify (shorter please)") && open_prompt {
                break shown;
            }
            assert!(Instant::now() < deadline, "waited for the question again; the screen:\n{shown}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    one_frame(&asked_again, "after modify, asked again");
    assert_eq!(asked_again.matches("? gate review").count(), 1, "one open question:\n{asked_again}");
    tmux(&["send-keys", "-t", "view", "approve", "Enter"]);
    let done = wait_for("EXITED", 1);
    one_frame(&done, "at the end");
    assert!(done.contains("EXITED 0"), "the run completed:\n{done}");
    assert!(!done.contains("answer>"), "no question is left on the screen:\n{done}");
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let dir = temp_dir("log-json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dagstream"))
        .args(["--log-format", "json", "serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(dir.join("data"))
        .arg("--site-root")
        .arg(stub_site("log-json-site"))
        .env("RUST_LOG", "info")
        .env("DAGSTREAM_TOKEN", common::TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serves");
    let stderr = child.stderr.take().expect("stderr");
    let first = BufReader::new(stderr).lines().next().expect("a log line").expect("readable");
    let _ = child.kill();
    let _ = child.wait();
    let line: serde_json::Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("not JSON ({e}): {first}"));
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(line["fields"]["message"].is_string(), "{line}");
    assert!(line["timestamp"].is_string(), "{line}");
}
