//! `lotus`: run the nucleus, inspect modules, call tools, watch events, measure.

mod cli;
mod client;
mod cmd;
mod config;
mod exit;
mod home;
mod logging;

use clap::Parser;

// Events are allocated by publishers and freed by subscribers on other threads; mimalloc's
// cross-thread free lists make that cheap where the system allocator takes arena locks.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let code = e
                .downcast_ref::<exit::CliError>()
                .map_or(exit::ExitCode::Failure, |c| c.code);
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(code as u8)
        }
    }
}
