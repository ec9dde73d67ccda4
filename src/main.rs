//! The `metacache` command line: `run` (the daemon), `check-config`, `demo`, the cache
//! look-ups (`get`, `check-metric`, `info`), `produce`, `resync` and `bench`. The
//! commands live in `cli/`, one module per group.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
