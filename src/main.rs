//! The `dagstream` binary; everything lives in the library.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    dagstream::cli::main().await
}
