//! The `sdserve` binary: parses arguments and wires the engine to the CLI or the server.

mod cli;

use clap::{Parser, Subcommand};

/// Stable Diffusion text-to-image: one binary for the command line and the server.
#[derive(Parser)]
#[command(name = "sdserve", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a prompt and write PNG files.
    Generate(cli::generate::GenerateArgs),
    /// Serve the HTTP APIs (native, AUTOMATIC1111, OpenAI images, /generate).
    Serve(cli::serve::ServeArgs),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Generate(args) => {
            cli::generate::run(args).map(|()| std::process::ExitCode::SUCCESS)
        }
        Command::Serve(args) => cli::serve::run(args),
    }
}
