//! `sagaflow`: the one binary of the order system (docs/architecture.md, "Run modes"). Every flag
//! also reads a `SAGAFLOW_*` environment variable; `sagaflow <command> --help` lists them.

fn main() -> std::process::ExitCode {
    sagaflow_cli::main()
}
