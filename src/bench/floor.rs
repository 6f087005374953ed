//! `bench fanout --floor`: the same fan-out with the server replaced by plain threads that write
//! each event, as a ready-made WebSocket frame, to every accepted socket. No WebSocket library,
//! no store, no tasks: what this machine's loopback TCP allows, the figure to hold the real
//! server's latency against. The subscribers and their reader are the real bench's.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::fanout::{FanoutBench, FanoutReport, now_ns, start_readers};
use super::subscriber::{Subscriber, text_frame};

/// Threads writing the events, as many as the machine's cores (the server's runtime has as many
/// workers).
fn writer_count() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

pub fn floor(settings: &FanoutBench) -> Result<FanoutReport, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut server_sides = Vec::with_capacity(settings.clients);
    let mut subscribers = Vec::with_capacity(settings.clients);
    for _ in 0..settings.clients {
        let client = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        let (server_side, _) = listener.accept().map_err(|e| e.to_string())?;
        server_side.set_nodelay(true).map_err(|e| e.to_string())?;
        server_sides.push(server_side);
        subscribers.push(Subscriber::from_stream(client)?);
    }
    let readers = start_readers(subscribers, settings);

    let started = Instant::now();
    // Event `k` carries one send time whichever writer sends it: the first writer ready to send
    // it stamps it (as the real bench's engine stamps an event just before sending it), so the
    // per-event figures, which group arrivals by that time, see one event, not one per writer.
    let stamps: Vec<AtomicU64> = (0..settings.events).map(|_| AtomicU64::new(0)).collect();
    let stamps = &stamps;
    let period = settings.rate.map(|rate| Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let share = settings.clients.div_ceil(writer_count()).max(1);
    std::thread::scope(|scope| {
        for sockets in server_sides.chunks_mut(share) {
            scope.spawn(move || {
                for (k, stamp) in stamps.iter().enumerate() {
                    if let Some(period) = period {
                        let due = started + period * k as u32;
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                    let now = now_ns();
                    let sent = match stamp.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => now,
                        Err(earlier) => earlier,
                    };
                    let text = format!(
                        r#"{{"seq":{k},"type":"node_state","node_id":"n","status":"running","output":{{"sent":{sent}}}}}"#
                    );
                    let frame = text_frame(&text);
                    for socket in sockets.iter_mut() {
                        // A socket whose reader gave up shows as missed events in the report.
                        let _ = socket.write_all(&frame);
                    }
                }
            });
        }
    });
    let mut report = FanoutReport::collect(settings, started, readers)?;
    report.floor = true;
    Ok(report)
}
