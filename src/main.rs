//! The `dagstream` binary; everything lives in the library.

/// The engine allocates many small strings and maps per event; mimalloc handles that pattern
/// markedly better than the system allocator (see `dagstream bench engine`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    keep_memory_in_small_pages();
    dagstream::cli::main().await
}

/// Turns transparent huge pages off for this process. mimalloc asks for them on its memory, and
/// it gives memory it has not used for a second back to the system, so a thread that touches
/// that memory again waits while the kernel zeroes a whole 2 MiB page: 0.23 ms on the reference
/// machine, in the middle of a fan-out, about once per event at 20 events/s (`bench fanout` at
/// 1 000 clients: 3% of the server's CPU went to zeroing pages, and its p99 moved from round to
/// round twice as much). A server's heap is tens of MiB, too little for huge pages to save
/// anything on address translation; without them the idle server holds 28 MiB, not 44.
/// Failing (an old kernel) changes nothing but that.
fn keep_memory_in_small_pages() {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}
