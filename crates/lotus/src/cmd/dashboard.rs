//! `lotus dashboard` (a sign-in link to the running nucleus's dashboard) and `lotus token`.

use anyhow::Result;

use crate::cli::{DashboardArgs, TokenArgs};
use crate::config::Config;
use crate::exit::{CliError, ExitCode};
use crate::home::Home;

/// The link carries the token in its fragment, which browsers never send to a server: the page
/// keeps it and takes it out of the address bar.
pub fn run(home: &Home, cfg: &Config, args: &DashboardArgs) -> Result<()> {
    // The token goes only to the address a live nucleus wrote.
    let client = crate::client::Client::new(home, cfg)?;
    let token = home.read_token()?;
    let link = format!("{}/#token={token}", client.base());
    println!("{link}");
    if args.open {
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        let status = std::process::Command::new(opener)
            .arg(&link)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            return Err(CliError::new(
                ExitCode::Failure,
                format!("cannot open a browser with `{opener}`; open the link above yourself"),
            )
            .into());
        }
    }
    Ok(())
}

/// Prints the token, made first if there is none (`--new`: replaced).
pub fn token(home: &Home, args: &TokenArgs) -> Result<()> {
    if args.new && std::env::var_os(crate::home::TOKEN_VAR).is_some() {
        return Err(CliError::new(
            ExitCode::BadInput,
            format!(
                "the token comes from ${}; change it there",
                crate::home::TOKEN_VAR
            ),
        )
        .into());
    }
    let token = if args.new {
        let t = home.new_token()?;
        if home.run_info().is_some() {
            eprintln!("(a running nucleus keeps the old token until it restarts)");
        }
        t
    } else {
        home.ensure()?;
        home.ensure_token()?
    };
    println!("{token}");
    Ok(())
}
