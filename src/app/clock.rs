//! Wall-clock time for the pages: now, RFC 3339 parsing and a ticking `now` signal for elapsed
//! times. The browser asks JavaScript's clock; the server asks the system clock.

use leptos::prelude::*;
use leptos_use_interval_fn::use_interval_fn;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> f64 {
    imp::now_ms()
}

/// An RFC 3339 timestamp as milliseconds since the Unix epoch.
pub fn parse_ms(rfc3339: &str) -> Option<f64> {
    imp::parse_ms(rfc3339)
}

/// `75_000.0` → `1m 15s`; `3_725_000.0` → `1h 02m`.
pub fn format_elapsed(ms: f64) -> String {
    let seconds = (ms.max(0.0) / 1000.0).floor() as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h {:02}m", seconds / 3600, (seconds % 3600) / 60),
    }
}

/// Now, updated every second (on the server: the time of rendering).
pub fn use_now() -> ReadSignal<f64> {
    let (now, set_now) = signal(now_ms());
    // Once right after hydration (the server's "now" is stale by then), then every second.
    Effect::new(move |_| set_now.set(now_ms()));
    let _ = use_interval_fn(move || set_now.set(now_ms()), 1000);
    now
}

#[cfg(feature = "hydrate")]
mod imp {
    pub fn now_ms() -> f64 {
        js_sys::Date::now()
    }

    pub fn parse_ms(rfc3339: &str) -> Option<f64> {
        let ms = js_sys::Date::parse(rfc3339);
        (!ms.is_nan()).then_some(ms)
    }
}

#[cfg(all(feature = "ssr", not(feature = "hydrate")))]
mod imp {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn now_ms() -> f64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
    }

    pub fn parse_ms(rfc3339: &str) -> Option<f64> {
        let time = humantime::parse_rfc3339_weak(rfc3339).ok()?;
        time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs_f64() * 1000.0)
    }
}

#[cfg(not(any(feature = "ssr", feature = "hydrate")))]
mod imp {
    pub fn now_ms() -> f64 {
        0.0
    }

    pub fn parse_ms(_: &str) -> Option<f64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_times_read_naturally() {
        assert_eq!(format_elapsed(9_400.0), "9s");
        assert_eq!(format_elapsed(75_000.0), "1m 15s");
        assert_eq!(format_elapsed(3_725_000.0), "1h 02m");
        assert_eq!(format_elapsed(-5.0), "0s");
    }

    #[test]
    #[cfg(feature = "ssr")]
    fn timestamps_parse() {
        assert_eq!(parse_ms("1970-01-01T00:00:01.500Z"), Some(1500.0));
        assert_eq!(parse_ms("soon"), None);
    }
}
