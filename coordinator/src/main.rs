//! `shoal-coordinator`: parses the command line, sets up tracing, and runs it.

use clap::Parser;
use shoal_coordinator::cli::{run_cli, Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Round lines go to stdout; logs go to stderr, filtered by RUST_LOG. A simulation prints its
    // rounds and summary and keeps quiet otherwise; a server logs who connects and what runs.
    let default_filter = match cli.command {
        Command::Simulate(_)
        | Command::Partition(_)
        | Command::Job(_)
        | Command::Study(_)
        | Command::Bench(_)
        | Command::Health(_)
        | Command::Certs(_)
        | Command::Tokens(_) => "warn",
        Command::Serve(_) => "warn,shoal_coordinator=info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run_cli(cli).await {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            // One line: the error and its causes, each said once.
            let line = shoal_shared::text::one_line(e.chain().map(|c| c.to_string()));
            eprintln!("error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}
