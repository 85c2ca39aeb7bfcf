//! Where the CLI's memory and reasoning commands run: the running nucleus when there is one
//! (over its API), else a nucleus in this process with just the modules they need, on the
//! home's files (holding the home's lock, so no `lotus up` starts meanwhile).

use anyhow::{Context as _, Result};
use lotus_nucleus::{ModuleState, NativeHost, Nucleus, NucleusBuilder, StateStore, ToolError};
use serde_json::Value;

use crate::client::Client;
use crate::config::Config;
use crate::exit::{CliError, ExitCode};
use crate::home::Home;

/// Where the tools and tasks run.
pub(crate) enum Target {
    /// The running nucleus.
    Remote(Client),
    /// A nucleus in this process (holding the home's lock).
    Local(Nucleus, std::fs::File),
}

impl Target {
    /// The running nucleus, else one started here with the memory module and, when `chat` is
    /// given (the models the first task will use), the reasoning module — fetching the local
    /// models first when they are what will answer.
    pub(crate) async fn open(home: &Home, cfg: &Config, chat: Option<&[String]>) -> Result<Self> {
        home.ensure()?;
        super::memory::fetch_embedding_model(home, cfg).await?;
        if let Ok(client) = Client::new(home, cfg) {
            return Ok(Self::Remote(client));
        }
        let lock = home.lock()?;
        let cfg = cfg.clone().with_home(home);
        let setup = super::provider::router(home, &cfg).await?;
        let mut host = NativeHost::new()
            .with(lotus::builtin::memory())
            .map_err(|e| anyhow::anyhow!("the memory manifest is invalid: {e}"))?;
        let mut names = vec!["memory"];
        if let Some(chain) = chat {
            super::provider::pull_local_if_alone(home, &cfg, &setup, chain).await?;
            host = host
                .with(lotus::builtin::reasoning())
                .map_err(|e| anyhow::anyhow!("the reasoning manifest is invalid: {e}"))?;
            names.push("reasoning");
        }
        let log = super::durable_log(home, &cfg).await?;
        let state =
            StateStore::open(&home.state_db()).context("cannot open the module state store")?;
        let nucleus = NucleusBuilder::new(cfg.nucleus_settings())
            .log(log)
            .state(state)
            .host(host)
            .router(setup.router)
            .build()?;
        nucleus.start().await;
        for name in names {
            let info = nucleus.module(name);
            if info.as_ref().map(|m| m.state) != Some(ModuleState::Running) {
                let why = info
                    .and_then(|m| m.last_error)
                    .unwrap_or_else(|| "it did not start".into());
                let _ = nucleus.shutdown().await;
                return Err(CliError::new(
                    ExitCode::Failure,
                    format!("the {name} module cannot run: {why}"),
                )
                .into());
            }
        }
        Ok(Self::Local(nucleus, lock))
    }

    /// Calls a tool; bad arguments exit 2, an unknown tool 4.
    pub(crate) async fn call(&self, tool: &str, args: Value) -> Result<Value> {
        match self {
            Self::Remote(client) => client.call_tool(tool, &args).await,
            Self::Local(n, _) => n.call_tool(tool, args).await.map_err(|e| {
                let code = match e {
                    ToolError::InvalidArguments { .. } => ExitCode::BadInput,
                    ToolError::NotFound { .. } => ExitCode::NotFound,
                    _ => ExitCode::Failure,
                };
                CliError::new(code, e.to_string()).into()
            }),
        }
    }

    /// The tools registered, by name.
    pub(crate) async fn tools(&self) -> Result<Vec<lotus_core::ToolSpec>> {
        match self {
            Self::Remote(client) => client.get("/api/v1/tools", &[]).await,
            Self::Local(n, _) => Ok(n.tools()),
        }
    }

    /// Stops the nucleus started here, if any, and lets go of the home.
    pub(crate) async fn close(self) -> Result<()> {
        if let Self::Local(n, lock) = self {
            n.shutdown().await?;
            drop(lock);
        }
        Ok(())
    }
}
