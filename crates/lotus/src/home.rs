//! `$LOTUS_HOME`: where configuration, data, modules, logs and the API token live.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// The environment variable that may hold the API token instead of `$LOTUS_HOME/token`.
pub const TOKEN_VAR: &str = "LOTUS_API_TOKEN";

/// Creates `path` (it must not exist) readable by its owner only, holding `contents`.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// The folders and files of one LOTUS home.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

/// What a running nucleus writes to `run/nucleus.json` so that clients can find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    /// Process id.
    pub pid: u32,
    /// Where the API listens.
    pub listen: SocketAddr,
}

impl Home {
    /// `--home`, else `$LOTUS_HOME`, else `~/.lotus`.
    pub fn resolve(flag: Option<PathBuf>) -> Result<Self> {
        let root = match flag {
            Some(p) => p,
            None => match std::env::var_os("HOME") {
                Some(h) => PathBuf::from(h).join(".lotus"),
                None => bail!("cannot find a home folder: set LOTUS_HOME or pass --home"),
            },
        };
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()?.join(root)
        };
        Ok(Self { root })
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `lotus.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("lotus.toml")
    }
    /// `data/`.
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    /// `modules/`.
    pub fn modules(&self) -> PathBuf {
        self.root.join("modules")
    }
    /// `logs/`.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// The API token.
    pub fn token_file(&self) -> PathBuf {
        self.root.join("token")
    }
    /// `run/nucleus.json`.
    pub fn run_file(&self) -> PathBuf {
        self.root.join("run").join("nucleus.json")
    }
    /// Compiled WebAssembly components, by content hash.
    pub fn wasm_cache(&self) -> PathBuf {
        self.root.join("cache").join("wasm")
    }

    /// The durable streams database.
    pub fn streams_db(&self) -> PathBuf {
        self.data().join("streams.db")
    }
    /// The cost ledger of provider calls.
    pub fn ledger_db(&self) -> PathBuf {
        self.data().join("ledger.db")
    }
    /// `models/`: the local models.
    pub fn models(&self) -> PathBuf {
        self.root.join("models")
    }
    /// `catalog.toml`: the user's additions to the model catalog.
    pub fn catalog_file(&self) -> PathBuf {
        self.root.join("catalog.toml")
    }
    /// `data/memory/`: the embedded memory tiers.
    pub fn memory(&self) -> PathBuf {
        self.data().join("memory")
    }
    /// `keys.enc`: the encrypted key store.
    pub fn keys_file(&self) -> PathBuf {
        self.root.join("keys.enc")
    }
    /// The module state database.
    pub fn state_db(&self) -> PathBuf {
        self.data().join("state.db")
    }

    /// Creates the folders (owner-only).
    pub fn ensure(&self) -> Result<()> {
        for dir in [
            self.root.clone(),
            self.data(),
            self.modules(),
            self.logs(),
            self.root.join("run"),
        ] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700));
        }
        Ok(())
    }

    /// The API token from `LOTUS_API_TOKEN`, when it is set: it wins over the token file.
    fn token_from_env() -> Result<Option<String>> {
        let Ok(t) = std::env::var(TOKEN_VAR) else {
            return Ok(None);
        };
        let t = t.trim();
        if t.len() < 32 {
            bail!(
                "{TOKEN_VAR} is too short: use at least 32 characters (`lotus token --new` makes a strong one)"
            );
        }
        // It travels in headers and as a WebSocket subprotocol: URL-safe characters only.
        if !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        {
            bail!("{TOKEN_VAR} may hold only letters, digits and - _ . ~");
        }
        Ok(Some(t.to_owned()))
    }

    /// Whether there is an API token yet (`LOTUS_API_TOKEN`, or the token file).
    pub fn has_token(&self) -> Result<bool> {
        Ok(Self::token_from_env()?.is_some() || self.token_file().exists())
    }

    fn random_token() -> Result<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| anyhow::anyhow!("no randomness for the token: {e}"))?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Replaces the token file with a new random token (mode 0600); the old one stops working
    /// when the nucleus next starts.
    pub fn new_token(&self) -> Result<String> {
        self.ensure()?;
        let token = Self::random_token()?;
        let path = self.token_file();
        let tmp = path.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        write_private(&tmp, &token)?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot replace the token file {}", path.display()))?;
        Ok(token)
    }

    /// The API token (`LOTUS_API_TOKEN`, else the token file), the file created (random, mode
    /// 0600) if there is none yet.
    pub fn ensure_token(&self) -> Result<String> {
        if let Some(t) = Self::token_from_env()? {
            return Ok(t);
        }
        let path = self.token_file();
        if path.exists() {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
                if mode != 0o600 {
                    tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "token file was readable by others; set to 0600");
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                }
            }
            return self.read_token();
        }
        let token = Self::random_token()?;
        write_private(&path, &token)?;
        Ok(token)
    }

    /// The API token, for clients.
    pub fn read_token(&self) -> Result<String> {
        if let Some(t) = Self::token_from_env()? {
            return Ok(t);
        }
        let path = self.token_file();
        let t = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the API token {}", path.display()))?;
        let t = t.trim().to_owned();
        if t.is_empty() {
            bail!(
                "the token file {} is empty; delete it and restart `lotus up`",
                path.display()
            );
        }
        Ok(t)
    }

    /// Takes the home's lock: one nucleus per home. Held while the returned file lives.
    pub fn lock(&self) -> Result<File> {
        let path = self.root.join("run").join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(_) => {
                let who = self
                    .run_info()
                    .map(|r| format!(" (pid {}, API on http://{})", r.pid, r.listen))
                    .unwrap_or_default();
                bail!(
                    "another nucleus is already running on {}{who}; stop it first or use another --home",
                    self.root.display()
                )
            }
        }
    }

    /// Writes `run/nucleus.json`.
    pub fn write_run_info(&self, info: &RunInfo) -> Result<()> {
        let path = self.run_file();
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(info)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Reads `run/nucleus.json` if a nucleus wrote one.
    pub fn run_info(&self) -> Option<RunInfo> {
        let text = std::fs::read(self.run_file()).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Removes `run/nucleus.json`.
    pub fn clear_run_info(&self) {
        let _ = std::fs::remove_file(self.run_file());
    }
}
