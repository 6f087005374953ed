//! `dagstream bench fanout`: delivery to many subscribers of one run, end to end over loopback.
//!
//! The server is a `dagstream serve` child process (its own runtime and memory, with a SQLite
//! store as in production); this process is the load: it creates an external run, connects
//! `clients` dashboards to its stream, then acts as the run's engine and publishes `events`
//! events (as fast as the server takes them, or at `rate` per second). Each event carries the
//! wall-clock time it was sent; each client notes when it arrived. Reported: messages delivered
//! per second, publish→receive latency p50 / p99 / max, and the server's resident memory per
//! connection (measured with every client connected and idle, before any event).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::subscriber::{Received, Subscriber, receive, widen};

/// Settings of one fan-out run.
#[derive(Clone, Debug)]
pub struct FanoutBench {
    /// Subscribers of the run.
    pub clients: usize,
    /// Events the engine publishes (0: only connect and measure memory).
    pub events: usize,
    /// Events per second; as fast as the server takes them when `None`.
    pub rate: Option<u32>,
    /// Threads reading the subscribers' sockets (each with its own epoll).
    pub client_threads: usize,
    /// Measure the machine instead of the server: see [`super::floor`].
    pub floor: bool,
    /// Measure a server already running (dagstream elsewhere, or a peer such as
    /// `bench/peers/seed-server.mjs`) instead of a `serve` child.
    pub outside: Option<Outside>,
    /// Measure a cluster of three `serve` children on this database and NATS server: the
    /// engine publishes on the first, the clients are spread over all three.
    pub cluster: Option<ClusterBench>,
}

/// Where the instances of `bench fanout --cluster` keep their runs and talk.
#[derive(Clone, Debug)]
pub struct ClusterBench {
    /// `postgres://…` (a scratch database: the bench's run is added to it).
    pub database: String,
    pub nats: String,
}

/// Instances `bench fanout --cluster` starts.
const CLUSTER_INSTANCES: usize = 3;

/// A server the bench did not start: where the clients subscribe, where it publishes.
#[derive(Clone, Debug)]
pub struct Outside {
    /// `ws://HOST:PORT/PATH` of the stream.
    pub subscribe: String,
    /// `ws://HOST:PORT/PATH` that takes the events to broadcast.
    pub publish: String,
}

/// What one run measured.
#[derive(Debug)]
pub struct FanoutReport {
    pub clients: usize,
    pub events: usize,
    /// Messages all clients received (events only).
    pub delivered: u64,
    /// From the first event sent to the last one received.
    pub elapsed: Duration,
    pub latency_p50: Duration,
    pub latency_p99: Duration,
    pub latency_max: Duration,
    /// Per event, the latency of its first arrival at any client (the server's pipeline, before
    /// the fan-out) and of its last (the whole fan-out): p50 and p99 over the events.
    pub first_arrival: (Duration, Duration),
    pub last_arrival: (Duration, Duration),
    /// Clients the server dropped as too slow (close 4008) or that did not get every event.
    pub incomplete: usize,
    /// The server's resident memory with no client and with every client connected, idle.
    pub rss_before: u64,
    pub rss_connected: u64,
    /// Measured with `--floor`: plain writer threads instead of a server.
    pub floor: bool,
    /// Measured on a server this bench did not start (its memory is not known).
    pub outside: bool,
    /// Instances the clients were spread over (1 unless `--cluster`).
    pub instances: usize,
}

impl std::fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per_connection = self.rss_connected.saturating_sub(self.rss_before) / self.clients.max(1) as u64;
        writeln!(f, "clients: {}, events: {}", self.clients, self.events)?;
        if self.floor {
            writeln!(f, "no server: plain threads write each event to every socket (this machine's floor)")?;
        } else if self.outside {
            writeln!(f, "a server this bench did not start: its memory is not measured")?;
        } else {
            if self.instances > 1 {
                writeln!(
                    f,
                    "a cluster of {} instances: the engine publishes on the first, the clients are spread over all (RSS: all instances)",
                    self.instances
                )?;
            }
            writeln!(
                f,
                "server RSS: {} KiB idle, {} KiB with every client connected: {:.1} KiB per connection",
                self.rss_before / 1024,
                self.rss_connected / 1024,
                per_connection as f64 / 1024.0
            )?;
        }
        if self.events > 0 {
            let seconds = self.elapsed.as_secs_f64().max(f64::EPSILON);
            writeln!(
                f,
                "delivered {} messages in {:.2} s: {:.0} messages/s",
                self.delivered,
                seconds,
                self.delivered as f64 / seconds
            )?;
            writeln!(
                f,
                "publish→receive latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                ms(self.latency_p50),
                ms(self.latency_p99),
                ms(self.latency_max)
            )?;
            writeln!(
                f,
                "per event, first client reached: p50 {:.2} ms, p99 {:.2} ms; last client reached: p50 {:.2} ms, p99 {:.2} ms",
                ms(self.first_arrival.0),
                ms(self.first_arrival.1),
                ms(self.last_arrival.0),
                ms(self.last_arrival.1)
            )?;
            writeln!(f, "clients that missed events or were dropped: {}", self.incomplete)?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(super) fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The server under test; killed when dropped.
struct Server {
    child: tokio::process::Child,
    addr: String,
    token: String,
    _dir: TempDir,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    /// Starts `serve`; in a cluster as instance `instance` on its database and NATS, with
    /// `token` as every instance's admin token.
    async fn start(clients: usize, cluster: Option<(&ClusterBench, usize)>, token: &str) -> Result<Server, String> {
        let name = cluster.map_or(String::new(), |(_, instance)| format!("-{instance}"));
        let dir = TempDir(std::env::temp_dir().join(format!("dagstream-fanout-{}{name}", std::process::id())));
        let site = dir.0.join("site");
        std::fs::create_dir_all(site.join("pkg")).map_err(|e| e.to_string())?;
        std::fs::write(site.join("pkg/dagstream.js"), "// no site needed").map_err(|e| e.to_string())?;
        let token = token.to_owned();
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = tokio::process::Command::new(exe);
        if let Some((cluster, instance)) = cluster {
            command.env("DAGSTREAM_DATABASE", &cluster.database).args([
                "serve",
                "--nats",
                &cluster.nats,
                "--instance-id",
                &format!("bench-{instance}"),
            ]);
        } else {
            command.arg("serve");
        }
        let mut child = command
            .args(["--addr", "127.0.0.1:0", "--max-connections-per-user"])
            .arg((clients + 16).to_string())
            .arg("--data")
            .arg(dir.0.join("data"))
            .arg("--site-root")
            .arg(&site)
            .env("DAGSTREAM_TOKEN", &token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let stdout = child.stdout.take().ok_or("no server output")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next_line().await.map_err(|e| e.to_string())?.ok_or("the server stopped")?;
            if let Some(rest) = line.split("dashboard on http://").nth(1) {
                break rest.trim().to_owned();
            }
        };
        // Keep reading so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server { child, addr, token, _dir: dir })
    }

    /// Resident memory of the server process, in bytes.
    fn rss(&self) -> u64 {
        let Some(pid) = self.child.id() else { return 0 };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    async fn create_run(&self) -> Result<String, String> {
        let body = r#"{"external":true,"name":"fanout bench","nodes":[{"id":"n"}]}"#;
        let mut stream = TcpStream::connect(&self.addr).await.map_err(|e| e.to_string())?;
        let request = format!(
            "POST /api/dags HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.map_err(|e| e.to_string())?;
        let json = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|_| format!("unexpected answer: {response}"))?;
        value["dag_id"].as_str().map(str::to_owned).ok_or_else(|| format!("no run created: {response}"))
    }

    /// Waits until this instance serves run `dag_id` (another instance created it).
    async fn wait_for_run(&self, dag_id: &str) -> Result<(), String> {
        for _ in 0..100 {
            let mut stream = TcpStream::connect(&self.addr).await.map_err(|e| e.to_string())?;
            let request = format!(
                "GET /api/dags/{dag_id} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                self.addr, self.token
            );
            stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await.map_err(|e| e.to_string())?;
            if response.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("instance {} never showed run {dag_id}", self.addr))
    }

    fn request(&self, path: &str) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, String> {
        let mut request = format!("ws://{}{path}", self.addr).into_client_request().map_err(|e| e.to_string())?;
        let bearer = format!("Bearer {}", self.token).parse().map_err(|_| "bad token header".to_owned())?;
        request.headers_mut().insert("authorization", bearer);
        Ok(request)
    }
}

/// Lets the bench hold many sockets (each client and each server connection is a file).
fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

pub async fn fanout(settings: &FanoutBench) -> Result<FanoutReport, String> {
    raise_file_limit();
    if settings.floor {
        let settings = settings.clone();
        return tokio::task::spawn_blocking(move || super::floor::floor(&settings)).await.map_err(|e| e.to_string())?;
    }
    if let Some(outside) = &settings.outside {
        return fanout_outside(settings, outside).await;
    }
    let token = crate::server::auth::new_secret();
    let servers = match &settings.cluster {
        None => vec![Server::start(settings.clients, None, &token).await?],
        Some(cluster) => {
            let mut servers = Vec::with_capacity(CLUSTER_INSTANCES);
            for instance in 0..CLUSTER_INSTANCES {
                servers.push(Server::start(settings.clients, Some((cluster, instance)), &token).await?);
            }
            servers
        }
    };
    let server = &servers[0];
    let dag_id = server.create_run().await?;
    // Every instance must know the run before its clients subscribe.
    for other in &servers[1..] {
        other.wait_for_run(&dag_id).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss = || servers.iter().map(Server::rss).sum::<u64>();
    let rss_before = rss();

    // The dashboards: connected one by one (each gets its snapshot), spread over the instances,
    // then read by plain threads.
    let stream_path = format!("/api/dags/{dag_id}/stream");
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    let clients = settings.clients;
    let subscribers = tokio::task::spawn_blocking(move || {
        (0..clients)
            .map(|i| {
                Subscriber::connect(&addrs[i % addrs.len()], &stream_path, Some(&token))
                    .map_err(|e| format!("client {i}: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()
    })
    .await
    .map_err(|e| e.to_string())??;
    // The engine connects before the pause, so its connection is no part of the first event.
    let publisher = match settings.events {
        0 => None,
        _ => Some(Publisher::connect(server.request(&format!("/api/dags/{dag_id}/engine"))?).await?),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = rss();
    // With no events there is nothing to read: the memory is measured, the clients may go.
    let readers = if settings.events == 0 { Vec::new() } else { start_readers(subscribers, settings) };

    let started = Instant::now();
    if let Some(publisher) = publisher {
        publisher.publish(settings).await?;
    }
    let collected = settings.clone();
    let mut report = tokio::task::spawn_blocking(move || FanoutReport::collect(&collected, started, readers))
        .await
        .map_err(|e| e.to_string())??;
    report.rss_before = rss_before;
    report.rss_connected = rss_connected;
    report.instances = servers.len();
    Ok(report)
}

/// The engine's side of the bench: a WebSocket to an engine socket (or a peer's publish socket).
struct Publisher {
    write: futures::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
        Message,
    >,
}

impl Publisher {
    /// Connects to the WebSocket of `request`; what comes back (a snapshot, refusals: there
    /// should be none) is read and dropped.
    async fn connect(request: tokio_tungstenite::tungstenite::handshake::client::Request) -> Result<Publisher, String> {
        let (engine, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| format!("the publisher could not connect: {e}"))?;
        let (write, mut read) = engine.split();
        tokio::spawn(async move { while let Some(Ok(_)) = read.next().await {} });
        Ok(Publisher { write })
    }

    /// Sends `settings.events` events, each with its send time, at `settings.rate` or as fast as
    /// the server takes them.
    async fn publish(mut self, settings: &FanoutBench) -> Result<(), String> {
        let mut ticks = settings.rate.map(|rate| {
            let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            interval
        });
        for _ in 0..settings.events {
            if let Some(ticks) = &mut ticks {
                ticks.tick().await;
            }
            let event =
                format!(r#"{{"type":"node_state","node_id":"n","status":"running","output":{{"sent":{}}}}}"#, now_ns());
            self.write.send(Message::text(event)).await.map_err(|e| format!("the publisher could not send: {e}"))?;
        }
        Ok(())
    }
}

/// `host:port` and path of a `ws://` URL.
fn split_ws_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| format!("{url}: only ws:// URLs are measured"))?;
    let (addr, path) = rest.split_once('/').map_or((rest, ""), |(addr, path)| (addr, path));
    Ok((addr.to_owned(), format!("/{path}")))
}

/// The fan-out of a server already running: same clients, same events, no memory figures.
async fn fanout_outside(settings: &FanoutBench, outside: &Outside) -> Result<FanoutReport, String> {
    let (addr, path) = split_ws_url(&outside.subscribe)?;
    let token = std::env::var("DAGSTREAM_TOKEN").ok();
    let clients = settings.clients;
    let subscribers = tokio::task::spawn_blocking(move || {
        (0..clients)
            .map(|i| Subscriber::connect(&addr, &path, token.as_deref()).map_err(|e| format!("client {i}: {e}")))
            .collect::<Result<Vec<_>, String>>()
    })
    .await
    .map_err(|e| e.to_string())??;
    let publisher = match settings.events {
        0 => None,
        _ => {
            let mut request = outside.publish.as_str().into_client_request().map_err(|e| e.to_string())?;
            if let Ok(token) = std::env::var("DAGSTREAM_TOKEN") {
                let bearer = format!("Bearer {token}").parse().map_err(|_| "bad token header".to_owned())?;
                request.headers_mut().insert("authorization", bearer);
            }
            Some(Publisher::connect(request).await?)
        }
    };
    // Every subscription (and the publisher) is registered before the first event.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let readers = if settings.events == 0 { Vec::new() } else { start_readers(subscribers, settings) };
    let started = Instant::now();
    if let Some(publisher) = publisher {
        publisher.publish(settings).await?;
    }
    let collected = settings.clone();
    let mut report = tokio::task::spawn_blocking(move || FanoutReport::collect(&collected, started, readers))
        .await
        .map_err(|e| e.to_string())??;
    report.outside = true;
    Ok(report)
}

/// Threads reading the subscribers until each has every event.
pub(super) type Readers = Vec<std::thread::JoinHandle<Result<Received, String>>>;

/// Shares the subscribers out to `settings.client_threads` reading threads and starts them.
pub(super) fn start_readers(subscribers: Vec<Subscriber>, settings: &FanoutBench) -> Readers {
    let threads = settings.client_threads.max(1);
    let events = settings.events as u64;
    let mut groups: Vec<Vec<Subscriber>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, subscriber) in subscribers.into_iter().enumerate() {
        groups[i % threads].push(subscriber);
    }
    groups.into_iter().map(|group| std::thread::spawn(move || receive(group, events))).collect()
}

impl FanoutReport {
    /// Waits for the reading threads and sums up what they saw (the memory figures are left 0).
    pub(super) fn collect(settings: &FanoutBench, started: Instant, readers: Readers) -> Result<FanoutReport, String> {
        let events = settings.events as u64;
        let mut delivered = 0;
        let mut incomplete = 0;
        let mut latencies = Vec::new();
        let mut last = started;
        let mut per_event: std::collections::HashMap<u64, (u32, u32)> = std::collections::HashMap::new();
        for reader in readers {
            let result = reader.join().map_err(|_| "a reading thread panicked".to_owned())??;
            delivered += result.per_subscriber.iter().sum::<u64>();
            incomplete += result.per_subscriber.iter().filter(|&&got| got < events).count();
            if let Some(at) = result.last {
                last = last.max(at);
            }
            latencies.extend(result.latencies_us);
            for (sent, arrivals) in result.per_event {
                widen(&mut per_event, sent, arrivals);
            }
        }
        latencies.sort_unstable();
        let (mut firsts, mut lasts): (Vec<u32>, Vec<u32>) = per_event.into_values().unzip();
        firsts.sort_unstable();
        lasts.sort_unstable();
        Ok(FanoutReport {
            clients: settings.clients,
            events: settings.events,
            delivered,
            elapsed: last.duration_since(started),
            latency_p50: percentile(&latencies, 0.5),
            latency_p99: percentile(&latencies, 0.99),
            latency_max: percentile(&latencies, 1.0),
            first_arrival: (percentile(&firsts, 0.5), percentile(&firsts, 0.99)),
            last_arrival: (percentile(&lasts, 0.5), percentile(&lasts, 0.99)),
            incomplete,
            rss_before: 0,
            rss_connected: 0,
            floor: false,
            outside: false,
            instances: 1,
        })
    }
}

/// The `q` quantile of sorted latencies in microseconds.
fn percentile(sorted_us: &[u32], q: f64) -> Duration {
    let i = ((sorted_us.len() as f64 - 1.0) * q).round() as usize;
    sorted_us.get(i).map_or(Duration::ZERO, |&us| Duration::from_micros(u64::from(us)))
}

/// The send time an event of this bench carries (`"sent":<ns>`), without parsing all of it.
pub(super) fn sent_ns(text: &str) -> Option<u64> {
    let rest = &text[text.find("\"sent\":")? + 7..];
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_send_time_is_read_from_the_event_text() {
        let text = r#"{"seq":3,"type":"node_state","node_id":"n","status":"running","output":{"sent":1234567}}"#;
        assert_eq!(super::sent_ns(text), Some(1_234_567));
        assert_eq!(super::sent_ns(r#"{"seq":1}"#), None);
    }
}
