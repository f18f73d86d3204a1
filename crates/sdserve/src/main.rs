//! The `sdserve` binary: parses arguments and wires the engine to the CLI or the server.

mod cli;

use clap::{Parser, Subcommand};

/// Stable Diffusion text-to-image: one binary for the command line and the server.
#[derive(Parser)]
#[command(name = "sdserve", version, about)]
struct Cli {
    /// Log lines as human-readable text or as one JSON object per line (for
    /// log collectors). Colours only when stderr is a terminal and NO_COLOR is unset.
    #[arg(
        long,
        global = true,
        value_name = "text|json",
        default_value = "text",
        env = "SDSERVE_LOG_FORMAT"
    )]
    log_format: cli::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a prompt and write PNG files.
    Generate(cli::generate::GenerateArgs),
    /// Serve the HTTP APIs (native, AUTOMATIC1111, OpenAI images, /generate).
    Serve(cli::serve::ServeArgs),
    /// Exit 0 if a local server answers /readyz with 200, else 1: the container
    /// health check (the image has no curl).
    Healthcheck(cli::healthcheck::HealthcheckArgs),
}

/// glibc's allocator plus reuse of large freed buffers and weight tensors
/// over the files' own pages (zero-copy load): see `sdserve_engine::alloc`.
#[global_allocator]
static ALLOCATOR: sdserve_engine::alloc::EngineAllocator = sdserve_engine::alloc::EngineAllocator;

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        // The probe prints its one line itself; a log subscriber would only add noise.
        Command::Healthcheck(args) => Ok(cli::healthcheck::run(&args)),
        Command::Generate(args) => {
            cli::logging::init(cli.log_format);
            cli::generate::run(args).map(|()| std::process::ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            cli::logging::init(cli.log_format);
            cli::serve::run(args)
        }
    }
}
