//! The `rewindfs` command: logging set-up, the CLI (`cli/`), exit codes.

mod cli;

use clap::Parser;

fn main() {
    use std::io::IsTerminal;
    // A reader that went away (`| head -1`) ends us quietly, as it ends
    // other tools; the daemons go back to ignoring SIGPIPE when they start.
    rewindfs::util::sys::on_broken_pipe(true);
    // Quiet by default: our warnings only (sled's own corruption reports
    // are summarised by ours). RUST_LOG raises it.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sled=off"));
    // Repeated messages from one place are rate-limited (util/ratelimit.rs).
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(filter)
        .with(rewindfs::util::ratelimit::RateLimit::default())
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match argv.first() {
        // mount(8)'s helper for `-t fuse.rewindfs` (a symlink to us).
        Some(argv0) if cli::mount_helper::invoked_as_helper(argv0) => {
            match cli::mount_helper::translate(&argv) {
                Ok(Some(args)) => cli::Cli::parse_from(args),
                Ok(None) => std::process::exit(0),
                Err(e) => {
                    eprintln!("mount.fuse.rewindfs: {e}");
                    std::process::exit(1);
                }
            }
        }
        _ => cli::Cli::parse(),
    };
    let code = match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
