//! The `dagstream` binary; everything lives in the library.

/// The engine allocates many small strings and maps per event; mimalloc handles that pattern
/// markedly better than the system allocator (see `dagstream bench engine`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    dagstream::cli::main().await
}
