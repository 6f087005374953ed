//! Helpers for tests that run the real `dagstream` binary: temp dirs, a served child process,
//! raw HTTP on loopback.

#![allow(dead_code)] // each test file uses its own share of these

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A client WebSocket of the tests.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The admin token the test servers run with (`DAGSTREAM_TOKEN`).
pub const TOKEN: &str = "integration-test-admin-token";

/// A WebSocket handshake request that carries the admin token.
pub fn ws_request(url: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().expect("a ws:// url");
    request.headers_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("header value"));
    request
}

pub use dagstream::store::testing::{Backend, Scratch};

/// Runs kept in a fresh database of `backend`, loaded the way `serve` loads them; the database
/// goes when the returned [`Scratch`] is dropped.
pub async fn stored_runs(
    backend: Backend,
    name: &str,
    limits: dagstream::hub::RoomLimits,
    engine: dagstream::engine::EngineConfig,
) -> (dagstream::runs::Runs, Scratch) {
    let scratch = Scratch::new(backend, name).await;
    let store = dagstream::store::open(&scratch.database, 4).await.expect("the test database opens");
    let runs = dagstream::runs::Runs::open(limits, engine, store).await.expect("runs load");
    (runs, scratch)
}

/// The app served in this process on port 0, the way `dagstream serve` serves it.
pub struct InProcess {
    pub addr: std::net::SocketAddr,
    pub state: dagstream::server::AppState,
    /// Held so streams are not told to shut down.
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

/// Serves `runs` with these auth settings and stream settings; must run inside tokio.
pub async fn serve_in_process(
    runs: dagstream::runs::Runs,
    auth: dagstream::server::AuthSettings,
    stream: dagstream::server::StreamConfig,
) -> InProcess {
    serve_in_process_with(runs, auth, stream, dagstream::server::REQUEST_TIMEOUT).await
}

/// [`serve_in_process`] with its own request timeout.
pub async fn serve_in_process_with(
    runs: dagstream::runs::Runs,
    auth: dagstream::server::AuthSettings,
    stream: dagstream::server::StreamConfig,
    request_timeout: std::time::Duration,
) -> InProcess {
    use dagstream::server::{AppState, Auth, app, listen};
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    // Sessions are kept where the runs are, as `serve` keeps them.
    let sessions = runs.store().cloned();
    // The users are the directory gates look groups up in, as `serve` has it.
    let auth = std::sync::Arc::new(Auth::new(auth, sessions).await.expect("auth settings are valid"));
    let directory: std::sync::Arc<dyn dagstream::links::Directory> = auth.clone();
    let state = AppState {
        service: dagstream::service::Service::new(std::sync::Arc::new(runs)).with_directory(directory),
        auth,
        leptos_options: leptos::prelude::LeptosOptions::builder().output_name("dagstream").build(),
        shutdown: shutdown_rx,
        stream,
        streams: tokio_util::task::TaskTracker::new(),
        request_timeout,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(listen::serve(listener, app(state.clone()), std::future::pending()));
    InProcess { addr, state, shutdown }
}

/// A fresh, empty directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dagstream-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A directory that passes for a built site (the server only checks `pkg/dagstream.js`).
pub fn stub_site(name: &str) -> PathBuf {
    let site = temp_dir(name);
    std::fs::create_dir_all(site.join("pkg")).expect("pkg dir");
    std::fs::write(site.join("pkg/dagstream.js"), "// built site stand-in").expect("site file");
    site
}

/// A `dagstream serve` child process on a free port, killed if the test ends early.
pub struct Served {
    pub child: Child,
    pub addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Starts the binary on port 0 and reads the address it announces.
    pub fn start(site_root: &Path, data: &Path) -> Served {
        Served::start_on(site_root, data, None)
    }

    /// [`Served::start`] with `--database URL` (the default database under `data` when `None`).
    pub fn start_on(site_root: &Path, data: &Path, database: Option<&str>) -> Served {
        Served::start_with(site_root, data, database, &[])
    }

    /// [`Served::start_on`] with more `serve` arguments (`--nats`, ...).
    pub fn start_with(site_root: &Path, data: &Path, database: Option<&str>, more: &[&str]) -> Served {
        Served::spawn(site_root, data, database, more, "warn", Stdio::inherit())
    }

    /// [`Served::start_with`], logging JSON lines at debug level into the file `log`.
    pub fn start_logged(site_root: &Path, data: &Path, database: Option<&str>, more: &[&str], log: &Path) -> Served {
        let log = std::fs::File::create(log).expect("a log file");
        let more: Vec<&str> = more.iter().copied().chain(["--log-format", "json"]).collect();
        Served::spawn(site_root, data, database, &more, "dagstream=debug", Stdio::from(log))
    }

    fn spawn(
        site_root: &Path,
        data: &Path,
        database: Option<&str>,
        more: &[&str],
        rust_log: &str,
        stderr: Stdio,
    ) -> Served {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dagstream"));
        if let Some(url) = database {
            command.env("DAGSTREAM_DATABASE", url);
        }
        let mut child = command
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(more)
            .arg("--data")
            .arg(data)
            .arg("--site-root")
            .arg(site_root)
            .env("RUST_LOG", rust_log)
            .env("DAGSTREAM_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(stderr)
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

    /// The server's process id, for signals.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 exchange: sends `request` as it is and answers the whole response.
pub fn raw_http(addr: impl std::net::ToSocketAddrs, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// The status code of a raw response (0 if it has none).
pub fn status_of(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A request with `token` as bearer; answers the whole response (head and body).
pub fn http_as(addr: &str, token: &str, method: &str, path: &str, content_type: Option<&str>, body: &str) -> String {
    let content_type = content_type.map(|t| format!("Content-Type: {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_http(addr, &request)
}

/// A request as the admin ([`TOKEN`]); answers the whole response (head and body).
pub fn http(addr: &str, method: &str, path: &str, content_type: Option<&str>, body: &str) -> String {
    http_as(addr, TOKEN, method, path, content_type, body)
}

pub fn http_get(addr: &str, path: &str) -> String {
    http(addr, "GET", path, None, "")
}

pub fn http_post(addr: &str, path: &str) -> String {
    http(addr, "POST", path, None, "")
}

/// The JSON body of a response (chunked bodies are joined).
pub fn json_body(response: &str) -> serde_json::Value {
    let (head, body) = response.split_once("\r\n\r\n").expect("a body");
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut joined = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            joined.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        joined
    } else {
        body.to_owned()
    };
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The `dag_id` of a `POST /api/dags` response.
pub fn dag_id_of(response: &str) -> String {
    json_body(response)["dag_id"].as_str().unwrap_or_else(|| panic!("no dag_id in {response}")).to_owned()
}

/// An OTLP/HTTP collector on a port of its own: answers its endpoint and every body POSTed to
/// `/v1/traces`.
pub fn otlp_collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    use std::sync::{Arc, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&bodies);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buffer = [0u8; 65536];
            // Read the head, then as many body bytes as it says.
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        if text.starts_with("POST /v1/traces") {
                            kept.lock().expect("lock").push(request[end + 4..end + 4 + length].to_vec());
                        }
                        break;
                    }
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (format!("http://{addr}"), bodies)
}

/// The JSON log lines in `path` (`--log-format json`); lines that are not JSON are left out.
pub fn json_log(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

/// The values of field `key` in a JSON log line, the event's own and its spans', each once.
pub fn log_values(line: &serde_json::Value, key: &str) -> Vec<String> {
    let spans = line["spans"].as_array().into_iter().flatten();
    let mut values: Vec<String> = [&line["fields"], &line["span"]]
        .into_iter()
        .chain(spans)
        .filter_map(|fields| fields[key].as_str().map(str::to_owned))
        .collect();
    values.sort();
    values.dedup();
    values
}
