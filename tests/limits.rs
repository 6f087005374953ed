//! The limits and session rules a user meets at the edges: the body cap (413), the request
//! timeout (408), sockets per user (429), a session that expires on an open socket (4001), the
//! `Secure` cookie behind a TLS proxy, the events API's `limit`, and the run list feed and engine
//! socket refusing missing credentials and foreign origins. Each serves the app on port 0.

#![cfg(feature = "ssr")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use dagstream::engine::EngineConfig;
use dagstream::hub::RoomLimits;
use dagstream::runs::Runs;
use dagstream::server::{AuthSettings, StreamConfig};
use futures::StreamExt;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use common::{InProcess, TOKEN, http, json_body, raw_http, status_of};

const PATIENCE: Duration = Duration::from_secs(15);

async fn serve(name: &str, settings: AuthSettings, request_timeout: Duration) -> InProcess {
    let work = std::env::temp_dir().join(format!("dagstream-limits-{name}-{}", std::process::id()));
    let runs = Runs::new(RoomLimits::default(), EngineConfig::new(work));
    common::serve_in_process_with(runs, settings, StreamConfig::default(), request_timeout).await
}

async fn serve_default(name: &str) -> InProcess {
    serve(name, AuthSettings::with_admin_token(TOKEN), dagstream::server::REQUEST_TIMEOUT).await
}

/// A WebSocket upgrade of `path` with these headers: `Ok` with the socket, or the refusal's
/// HTTP status.
async fn upgrade(addr: SocketAddr, path: &str, headers: &[(&'static str, String)]) -> Result<common::Socket, u16> {
    let mut request = format!("ws://{addr}{path}").into_client_request().expect("url");
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().expect("header value"));
    }
    match connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("unexpected failure {other:?}"),
    }
}

fn bearer() -> (&'static str, String) {
    ("authorization", format!("Bearer {TOKEN}"))
}

/// Signs in through the one-click link; answers the response head.
fn sign_in(addr: SocketAddr, forwarded_proto: Option<&str>) -> String {
    let proto = forwarded_proto.map(|p| format!("X-Forwarded-Proto: {p}\r\n")).unwrap_or_default();
    raw_http(addr, &format!("GET /login?token={TOKEN} HTTP/1.1\r\nHost: {addr}\r\n{proto}Connection: close\r\n\r\n"))
}

/// The session cookie (`name=value`) a sign-in set.
fn session_cookie(response: &str) -> String {
    let line = response
        .lines()
        .find(|line| line.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("a cookie is set: {response}"));
    line.split_once(':').expect("a header").1.trim().split(';').next().expect("name=value").to_owned()
}

/// Plain HTTP blocks a worker: these tests run on two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_one_mib_is_refused_with_413_and_nothing_starts() {
    let server = serve_default("413").await;
    let addr = server.addr.to_string();
    let spec = format!("name = \"big\"\n# {}\n[[nodes]]\nid = \"a\"\nkind = \"simulate\"\n", "x".repeat(1024 * 1024));
    let response = http(&addr, "POST", "/api/dags", Some("application/toml"), &spec);
    assert_eq!(status_of(&response), 413, "{}", &response[..response.len().min(300)]);
    assert!(server.state.service.list().is_empty(), "nothing started");
    let small = "name = \"small\"\n[[nodes]]\nid = \"a\"\nkind = \"simulate\"\n";
    assert_eq!(status_of(&http(&addr, "POST", "/api/dags", Some("application/toml"), small)), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_takes_too_long_is_answered_408() {
    let server = serve("408", AuthSettings::with_admin_token(TOKEN), Duration::from_millis(300)).await;
    let addr = server.addr;
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    // The head and half of the announced body, then nothing.
    let head = format!(
        "POST /api/dags HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/toml\r\nContent-Length: 100\r\n\r\nname = \"slow\"\n"
    );
    stream.write_all(head.as_bytes()).expect("write");
    let mut answer = [0u8; 64];
    let read = stream.read(&mut answer).expect("an answer");
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(server.state.service.list().is_empty(), "nothing started");
}

#[tokio::test]
async fn a_user_over_the_socket_cap_gets_429_until_one_closes() {
    let mut settings = AuthSettings::with_admin_token(TOKEN);
    settings.max_connections_per_user = 2;
    let server = serve("429", settings, dagstream::server::REQUEST_TIMEOUT).await;
    let first = upgrade(server.addr, "/api/runs/stream", &[bearer()]).await.expect("first");
    let _second = upgrade(server.addr, "/api/runs/stream", &[bearer()]).await.expect("second");
    assert_eq!(upgrade(server.addr, "/api/runs/stream", &[bearer()]).await.err(), Some(429), "the third");
    drop(first);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match upgrade(server.addr, "/api/runs/stream", &[bearer()]).await {
            Ok(_) => break,
            Err(429) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(status) => panic!("a slot frees once a socket closes, got {status}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_expires_closes_its_open_socket_with_4001() {
    let mut settings = AuthSettings::with_admin_token(TOKEN);
    settings.session_ttl = Duration::from_secs(1);
    let server = serve("expiry", settings, dagstream::server::REQUEST_TIMEOUT).await;
    let cookie = session_cookie(&sign_in(server.addr, None));
    let origin = format!("http://{}", server.addr);
    let spec = "name = \"e\"\n[[nodes]]\nid = \"g\"\nkind = \"gate\"\n";
    let dag_id =
        common::dag_id_of(&http(&server.addr.to_string(), "POST", "/api/dags", Some("application/toml"), spec));
    // The run list feed and a run's stream, both opened by the session before it expires.
    let mut sockets = Vec::new();
    for path in ["/api/runs/stream".to_owned(), format!("/api/dags/{dag_id}/stream")] {
        let headers = [("cookie", cookie.clone()), ("origin", origin.clone())];
        sockets.push((upgrade(server.addr, &path, &headers).await.expect("the session opens a socket"), path));
    }
    for (mut socket, path) in sockets {
        let code = tokio::time::timeout(PATIENCE, async {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Close(frame) = message {
                    return frame.map(|f| u16::from(f.code));
                }
            }
            None
        })
        .await
        .expect("closed when the session expires");
        assert_eq!(code, Some(4001), "{path}");
    }
    let page = raw_http(
        server.addr,
        &format!("GET /api/me HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status_of(&page), 401, "the expired session no longer signs in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_secure_behind_a_tls_proxy_only() {
    let server = serve_default("secure").await;
    let plain = sign_in(server.addr, None).to_ascii_lowercase();
    let behind_tls = sign_in(server.addr, Some("https")).to_ascii_lowercase();
    let cookie_line = |response: &str| {
        response.lines().find(|line| line.starts_with("set-cookie:")).map(str::to_owned).unwrap_or_default()
    };
    assert!(!cookie_line(&plain).contains("secure"), "{plain}");
    assert!(cookie_line(&behind_tls).contains("; secure"), "{behind_tls}");
    assert!(cookie_line(&behind_tls).contains("httponly") && cookie_line(&behind_tls).contains("samesite=strict"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_api_answers_pages_of_at_most_limit_events() {
    let server = serve_default("events").await;
    let addr = server.addr.to_string();
    let spec = "name = \"e\"\n[[nodes]]\nid = \"a\"\nkind = \"simulate\"\n[[nodes]]\nid = \"b\"\nkind = \"simulate\"\n";
    let dag_id = common::dag_id_of(&http(&addr, "POST", "/api/dags", Some("application/toml"), spec));
    let room = server.state.service.entry(&dag_id).expect("run").room;
    tokio::time::timeout(PATIENCE, room.completed()).await.expect("the run completes");
    let total = room.seq();
    assert!(total >= 6, "enough events to page through: {total}");
    let seqs = |query: &str| -> Vec<u64> {
        let response = http(&addr, "GET", &format!("/api/dags/{dag_id}/events?{query}"), None, "");
        assert_eq!(status_of(&response), 200, "{response}");
        json_body(&response).as_array().expect("a list").iter().map(|e| e["seq"].as_u64().expect("seq")).collect()
    };
    assert_eq!(seqs("after=0&limit=3"), [1, 2, 3]);
    assert_eq!(seqs("after=2&limit=2"), [3, 4]);
    assert_eq!(seqs("after=0&limit=0"), [1], "a limit below one reads one");
    assert_eq!(seqs("after=0").len() as u64, total, "the default reads everything up to 1 000");
    assert_eq!(seqs(&format!("after={total}&limit=5")), Vec::<u64>::new(), "nothing after the newest");
    let bad = http(&addr, "GET", &format!("/api/dags/{dag_id}/events?after=minus"), None, "");
    assert_eq!(status_of(&bad), 400, "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_list_feed_and_the_engine_socket_refuse_missing_credentials_and_foreign_origins() {
    let server = serve_default("origins").await;
    let addr = server.addr.to_string();
    let external = r#"{"external": true, "name": "ext", "nodes": [{"id": "a"}]}"#;
    let dag_id = common::dag_id_of(&http(&addr, "POST", "/api/dags", Some("application/json"), external));
    let cookie = session_cookie(&sign_in(server.addr, None));
    let foreign = ("origin", "https://evil.example".to_owned());
    let own = ("origin", format!("http://{addr}"));
    for path in ["/api/runs/stream".to_owned(), format!("/api/dags/{dag_id}/engine")] {
        assert_eq!(upgrade(server.addr, &path, &[]).await.err(), Some(401), "{path} without credentials");
        assert_eq!(
            upgrade(server.addr, &path, &[("cookie", cookie.clone()), foreign.clone()]).await.err(),
            Some(403),
            "{path} from another site's page with a valid cookie"
        );
        assert_eq!(
            upgrade(server.addr, &path, &[bearer(), foreign.clone()]).await.err(),
            Some(403),
            "{path} with a token from another site's page"
        );
        assert_eq!(
            upgrade(server.addr, &path, &[("cookie", cookie.clone())]).await.err(),
            Some(403),
            "{path} with a cookie and no Origin (not a browser: it must use a token)"
        );
        let socket = upgrade(server.addr, &path, &[("cookie", cookie.clone()), own.clone()]).await;
        assert!(socket.is_ok(), "{path} from the server's own page: {:?}", socket.err());
    }
}
