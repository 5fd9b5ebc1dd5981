//! The `sagaflow` command line, built by this package so that `cargo test -p sagaflow-tests`
//! always runs the current code (Cargo builds a package's binaries before its integration tests;
//! another package's binary could be stale).

fn main() -> std::process::ExitCode {
    sagaflow_cli::main()
}
