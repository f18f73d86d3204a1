//! `sdserve serve`: load the model and serve the HTTP APIs (in progress).

/// Flags of `sdserve serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {}

pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("sdserve serve is not implemented yet")
}
