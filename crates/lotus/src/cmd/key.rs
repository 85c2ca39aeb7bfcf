//! `lotus key set|list|remove|passphrase`: API keys in the encrypted key store, and unlocking it
//! for the commands that use providers.

use std::io::{IsTerminal, Read};

use anyhow::Result;
use lotus_providers::keystore::{KeyStore, KeyStoreError};
use lotus_providers::{Secret, setup};
use serde_json::json;
use zeroize::Zeroizing;

use crate::cli::KeyCmd;
use crate::exit::{CliError, ExitCode, bad_input};
use crate::home::Home;

/// The variable holding the store's passphrase.
pub const PASSPHRASE_VAR: &str = "LOTUS_KEYS_PASSPHRASE";
/// The variable holding a new passphrase for `lotus key passphrase`.
pub const NEW_PASSPHRASE_VAR: &str = "LOTUS_KEYS_NEW_PASSPHRASE";

/// Runs a `lotus key` command.
pub fn run(home: &Home, cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::Set { name } => set(home, &name),
        KeyCmd::List(f) => list(home, f.json),
        KeyCmd::Remove { name } => remove(home, &name),
        KeyCmd::Passphrase => change_passphrase(home),
    }
}

/// The key store, unlocked to build the router. No store and nothing `sealed` elsewhere (in
/// L4's provider configurations): none. No passphrase (no variable, no terminal to ask on):
/// none, with a note saying how to unlock it. With sealed keys but no store file, a store is
/// made in memory (never saved) from the passphrase, to open them. A wrong passphrase or a
/// damaged store is an error.
pub fn unlock(home: &Home, sealed: bool) -> Result<Option<KeyStore>> {
    let path = home.keys_file();
    let exists = KeyStore::exists(&path);
    if !exists && !sealed {
        return Ok(None);
    }
    let Some(pass) = passphrase(PASSPHRASE_VAR, "Passphrase of the key store: ", false)? else {
        let what = if exists {
            format!(
                "the encrypted key store {} is locked and its keys",
                path.display()
            )
        } else {
            "the providers' sealed keys (lotus provider set) are locked and".to_owned()
        };
        eprintln!("note: {what} are not used: set {PASSPHRASE_VAR}");
        return Ok(None);
    };
    let store = if exists {
        KeyStore::open(&path, &pass)
    } else {
        KeyStore::create(&path, &pass)
    };
    Ok(Some(store.map_err(store_error)?))
}

/// Reads `name`'s API key: at a prompt on a terminal, else from standard input. `again` is the
/// command to show in the error when none was given.
pub(crate) fn read_key(name: &str, again: &str) -> Result<Zeroizing<String>> {
    let key = if std::io::stdin().is_terminal() {
        Zeroizing::new(rpassword::prompt_password(format!("API key for {name}: "))?)
    } else {
        let mut buf = Zeroizing::new(String::new());
        std::io::stdin().read_to_string(&mut buf)?;
        buf
    };
    if key.trim().is_empty() {
        return Err(bad_input(format!(
            "no key was given for `{name}`: type it at the prompt, or pipe it in (e.g. `{again} < keyfile`)"
        )));
    }
    if key.trim().contains(char::is_whitespace) {
        return Err(bad_input(format!(
            "the key for `{name}` contains spaces or several lines: give the key alone"
        )));
    }
    Ok(Zeroizing::new(key.trim().to_owned()))
}

pub(crate) fn store_error(e: KeyStoreError) -> anyhow::Error {
    let code = match e {
        KeyStoreError::Io { .. } => ExitCode::Failure,
        _ => ExitCode::BadInput,
    };
    CliError::new(code, e.to_string()).into()
}

/// `$var`, else a prompt on the terminal (twice when `confirm`), else `None`.
fn passphrase(var: &str, prompt: &str, confirm: bool) -> Result<Option<Zeroizing<String>>> {
    if let Ok(p) = std::env::var(var) {
        return Ok(Some(Zeroizing::new(p)));
    }
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Ok(None);
    }
    let first = Zeroizing::new(rpassword::prompt_password(prompt)?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("The same again: ")?);
        if *first != *again {
            return Err(bad_input("the two passphrases differ; nothing was changed"));
        }
    }
    Ok(Some(first))
}

fn required(pass: Option<Zeroizing<String>>, var: &str) -> Result<Zeroizing<String>> {
    pass.ok_or_else(|| {
        bad_input(format!(
            "the key store needs a passphrase: set {var}, or run this in a terminal to be asked"
        ))
    })
}

/// Opens the store, or creates it (asking for a new passphrase twice) when `create`.
pub(crate) fn open(home: &Home, create: bool) -> Result<KeyStore> {
    let path = home.keys_file();
    if KeyStore::exists(&path) {
        let pass = required(
            passphrase(PASSPHRASE_VAR, "Passphrase of the key store: ", false)?,
            PASSPHRASE_VAR,
        )?;
        return KeyStore::open(&path, &pass).map_err(store_error);
    }
    if !create {
        return Err(CliError::new(
            ExitCode::NotFound,
            format!(
                "there is no key store at {} yet: add a key with `lotus key set openai`",
                path.display()
            ),
        )
        .into());
    }
    let pass = required(
        passphrase(
            PASSPHRASE_VAR,
            "New passphrase for the key store (keys.enc): ",
            true,
        )?,
        PASSPHRASE_VAR,
    )?;
    KeyStore::create(&path, &pass).map_err(store_error)
}

/// The environment variable that holds `provider`'s key and so wins over the stored one.
pub(crate) fn env_override(provider: &str) -> Option<&'static str> {
    setup::key_vars(provider)
        .iter()
        .copied()
        .find(|v| std::env::var(v).is_ok_and(|k| !k.trim().is_empty()))
}

fn check_provider(name: &str) -> Result<()> {
    if setup::keyed_names().any(|n| n == name) {
        return Ok(());
    }
    Err(bad_input(format!(
        "`{name}` is not a provider that takes an API key: use one of {}",
        setup::keyed_names().collect::<Vec<_>>().join(", ")
    )))
}

fn set(home: &Home, name: &str) -> Result<()> {
    check_provider(name)?;
    let key = read_key(name, &format!("lotus key set {name}"))?;
    let mut store = open(home, true)?;
    store.set(name, Secret::new(&*key)).map_err(store_error)?;
    store.save().map_err(store_error)?;
    let overridden = env_override(name);
    println!("stored the key for {name} in {}", store.path().display());
    if let Some(var) = overridden {
        println!("note: ${var} is set and takes precedence over the stored key");
    }
    Ok(())
}

fn list(home: &Home, json: bool) -> Result<()> {
    let path = home.keys_file();
    if !KeyStore::exists(&path) {
        if json {
            println!("[]");
        } else {
            println!(
                "no key store yet ({}): add a key with `lotus key set openai`",
                path.display()
            );
        }
        return Ok(());
    }
    let store = open(home, false)?;
    let rows: Vec<_> = store
        .list()
        .into_iter()
        .map(|k| {
            let env = env_override(&k.name).map(|v| format!("${v}"));
            (k, env)
        })
        .collect();
    if json {
        let out: Vec<_> = rows
            .iter()
            .map(|(k, env)| {
                json!({
                    "name": k.name,
                    "fingerprint": k.fingerprint,
                    "added": k.added,
                    "overridden_by": env,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("the key store is empty: add a key with `lotus key set openai`");
        return Ok(());
    }
    println!(
        "{:<12} {:<14} {:<22} IN USE",
        "NAME", "FINGERPRINT", "ADDED"
    );
    for (k, env) in rows {
        let added = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(k.added),
        );
        let used = env.map_or_else(|| "yes".to_owned(), |v| format!("no: {v} is set"));
        println!("{:<12} {:<14} {:<22} {used}", k.name, k.fingerprint, added);
    }
    Ok(())
}

fn remove(home: &Home, name: &str) -> Result<()> {
    let mut store = open(home, false)?;
    if !store.remove(name) {
        return Err(CliError::new(
            ExitCode::NotFound,
            format!("the key store holds no key for `{name}` (see `lotus key list`)"),
        )
        .into());
    }
    store.save().map_err(store_error)?;
    println!("removed the key for {name}");
    Ok(())
}

fn change_passphrase(home: &Home) -> Result<()> {
    let mut store = open(home, false)?;
    let new = required(
        passphrase(NEW_PASSPHRASE_VAR, "New passphrase: ", true)?,
        NEW_PASSPHRASE_VAR,
    )?;
    store.change_passphrase(&new).map_err(store_error)?;
    store.save().map_err(store_error)?;
    println!("the key store is sealed under the new passphrase");
    Ok(())
}
