//! The encrypted key store (`$LOTUS_HOME/keys.enc`): API keys kept on disk only encrypted.
//!
//! The file is JSON: a header (format, version, key-derivation parameters, cipher) and one
//! sealed box. The key is derived from a passphrase with Argon2id and a random salt; the keys
//! are sealed with XChaCha20-Poly1305 under a fresh random nonce on every save, with the header
//! as associated data, so a changed parameter is detected like a changed byte. A wrong
//! passphrase and a tampered file are the same error: nothing opens. Saves write a new file
//! (mode 0600) and rename it over the old one, so a crash leaves either the old store or the new.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::Secret;

const FORMAT: &str = "lotus-keys";
const VERSION: u32 = 1;
const CIPHER: &str = "xchacha20poly1305";
/// Argon2id cost (the OWASP recommendation: 19 MiB, 2 passes, 1 lane).
const MEMORY_KIB: u32 = 19 * 1024;
const ITERATIONS: u32 = 2;
const PARALLELISM: u32 = 1;
/// Bounds on what a file may ask for, so a crafted file cannot make opening take forever.
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_ITERATIONS: u32 = 64;

/// Why the key store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The file could not be read or written.
    #[error("key store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a key store this version understands.
    #[error(
        "key store {path} is not readable: {reason}; restore it from a backup, or move it away and add the keys again with `lotus key set`"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The passphrase is wrong, or the file was altered.
    #[error(
        "cannot open the key store {path}: wrong passphrase, or the file was altered (check LOTUS_KEYS_PASSPHRASE)"
    )]
    WrongPassphrase {
        /// The file.
        path: PathBuf,
    },
    /// An empty passphrase.
    #[error("the key store passphrase is empty: choose one (LOTUS_KEYS_PASSPHRASE or the prompt)")]
    EmptyPassphrase,
    /// A key name that is not allowed.
    #[error(
        "`{0}` is not a key name: use lowercase letters, digits, `-` and `_` (e.g. openai, anthropic)"
    )]
    BadName(String),
    /// An empty key value.
    #[error("the key for `{0}` is empty")]
    EmptyKey(String),
    /// A sealed value that does not open.
    #[error(
        "cannot open the sealed key of `{context}`: {reason}; set it again (`lotus provider set {context} --key`)"
    )]
    Unsealable {
        /// What it was sealed for (a provider's name).
        context: String,
        /// Why it does not open.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    kdf: Kdf,
    cipher: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kdf {
    algorithm: String,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(flatten)]
    header: Header,
    nonce: String,
    ciphertext: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Plain {
    keys: BTreeMap<String, Entry>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Entry {
    key: String,
    /// Unix seconds when it was set.
    added: u64,
}

impl Drop for Plain {
    fn drop(&mut self) {
        for e in self.keys.values_mut() {
            e.key.zeroize();
        }
    }
}

/// What `lotus key list` shows of one key: never the key itself.
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    /// `openai`, …
    pub name: String,
    /// The first hex digits of the key's SHA-256, to tell keys apart.
    pub fingerprint: String,
    /// Unix seconds when it was set.
    pub added: u64,
}

/// An opened key store: the keys in memory, the derived key to seal them again.
pub struct KeyStore {
    path: PathBuf,
    kdf: Kdf,
    key: Zeroizing<[u8; 32]>,
    /// Kept to open values sealed under another salt (by another machine's store).
    passphrase: Zeroizing<String>,
    plain: Plain,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("path", &self.path)
            .field("names", &self.plain.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Whether a store exists at `path`.
    pub fn exists(path: &Path) -> bool {
        path.exists()
    }

    /// A new, empty store at `path` sealed by `passphrase` (written on [`save`](Self::save)).
    pub fn create(path: &Path, passphrase: &str) -> Result<Self, KeyStoreError> {
        let mut salt = [0u8; 16];
        random(path, &mut salt)?;
        let kdf = Kdf {
            algorithm: "argon2id".into(),
            memory_kib: MEMORY_KIB,
            iterations: ITERATIONS,
            parallelism: PARALLELISM,
            salt: B64.encode(salt),
        };
        let key = derive(path, &kdf, passphrase)?;
        Ok(Self {
            path: path.to_owned(),
            kdf,
            key,
            passphrase: Zeroizing::new(passphrase.to_owned()),
            plain: Plain::default(),
        })
    }

    /// Opens the store at `path` with `passphrase`.
    pub fn open(path: &Path, passphrase: &str) -> Result<Self, KeyStoreError> {
        let corrupt = |reason: String| KeyStoreError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read(path).map_err(|source| KeyStoreError::Io {
            path: path.to_owned(),
            source,
        })?;
        let file: File = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        let h = &file.header;
        if h.format != FORMAT {
            return Err(corrupt(format!(
                "format `{}`, expected `{FORMAT}`",
                h.format
            )));
        }
        if h.version != VERSION {
            return Err(corrupt(format!(
                "version {} (this lotus reads version {VERSION})",
                h.version
            )));
        }
        if h.cipher != CIPHER || h.kdf.algorithm != "argon2id" {
            return Err(corrupt(format!(
                "cipher `{}` with `{}`, expected `{CIPHER}` with `argon2id`",
                h.cipher, h.kdf.algorithm
            )));
        }
        let key = derive(path, &h.kdf, passphrase)?;
        let aad = serde_json::to_vec(h).map_err(|e| corrupt(e.to_string()))?;
        let opened = decrypt(&key, &file.nonce, &file.ciphertext, &aad)
            .map_err(corrupt)?
            .ok_or_else(|| KeyStoreError::WrongPassphrase {
                path: path.to_owned(),
            })?;
        let plain: Plain = serde_json::from_slice(&opened)
            .map_err(|e| corrupt(format!("the sealed contents: {e}")))?;
        Ok(Self {
            path: path.to_owned(),
            kdf: h.kdf.clone(),
            key,
            passphrase: Zeroizing::new(passphrase.to_owned()),
            plain,
        })
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key named `name`.
    pub fn get(&self, name: &str) -> Option<Secret> {
        self.plain.keys.get(name).map(|e| Secret::new(&e.key))
    }

    /// Every key, by name.
    pub fn secrets(&self) -> BTreeMap<String, Secret> {
        self.plain
            .keys
            .iter()
            .map(|(n, e)| (n.clone(), Secret::new(&e.key)))
            .collect()
    }

    /// The keys' names, fingerprints and dates.
    pub fn list(&self) -> Vec<KeyInfo> {
        use sha2::Digest as _;
        self.plain
            .keys
            .iter()
            .map(|(name, e)| {
                let digest = sha2::Sha256::digest(e.key.as_bytes());
                KeyInfo {
                    name: name.clone(),
                    fingerprint: format!("{:x}", digest)[..12].to_owned(),
                    added: e.added,
                }
            })
            .collect()
    }

    /// Sets `name` to `key` (in memory; [`save`](Self::save) writes it).
    pub fn set(&mut self, name: &str, key: Secret) -> Result<(), KeyStoreError> {
        check_name(name)?;
        let value = key.expose().trim();
        if value.is_empty() {
            return Err(KeyStoreError::EmptyKey(name.to_owned()));
        }
        let added = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(mut old) = self.plain.keys.insert(
            name.to_owned(),
            Entry {
                key: value.to_owned(),
                added,
            },
        ) {
            old.key.zeroize();
        }
        Ok(())
    }

    /// Removes `name`; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        match self.plain.keys.remove(name) {
            Some(mut old) => {
                old.key.zeroize();
                true
            }
            None => false,
        }
    }

    /// Seals the store under a new passphrase (and a new salt); [`save`](Self::save) writes it.
    pub fn change_passphrase(&mut self, passphrase: &str) -> Result<(), KeyStoreError> {
        let fresh = Self::create(&self.path, passphrase)?;
        self.kdf = fresh.kdf.clone();
        self.key = fresh.key.clone();
        self.passphrase = fresh.passphrase.clone();
        Ok(())
    }

    /// Writes the store: sealed under a fresh nonce, to a new file renamed over the old one.
    pub fn save(&self) -> Result<(), KeyStoreError> {
        let io = |source| KeyStoreError::Io {
            path: self.path.clone(),
            source,
        };
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            kdf: self.kdf.clone(),
            cipher: CIPHER.into(),
        };
        let aad = serde_json::to_vec(&header).map_err(|e| io(std::io::Error::other(e)))?;
        let plain = Zeroizing::new(
            serde_json::to_vec(&self.plain).map_err(|e| io(std::io::Error::other(e)))?,
        );
        let (nonce, ciphertext) = encrypt(&self.path, &self.key, &plain, &aad)?;
        let file = File {
            header,
            nonce,
            ciphertext,
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| io(std::io::Error::other(e)))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.path.with_extension("enc.tmp");
        write_private(&tmp, &text).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

/// The prefix of a sealed value.
const SEALED: &str = "lotus-sealed:1:";

/// A secret sealed for keeping elsewhere: the derivation it was sealed under, the nonce, the
/// ciphertext.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    kdf: Kdf,
    nonce: String,
    ciphertext: String,
}

impl KeyStore {
    /// Seals `secret` for keeping outside the store (the providers' configurations in L4),
    /// bound to `context` (a provider's name): XChaCha20-Poly1305 under this store's key and a
    /// fresh nonce, with the context and the derivation as associated data, so the sealed value
    /// cannot be moved to another context or have its parameters changed unnoticed.
    pub fn seal(&self, context: &str, secret: &Secret) -> Result<String, KeyStoreError> {
        let aad = sealed_aad(context, &self.kdf);
        let (nonce, ciphertext) = encrypt(&self.path, &self.key, secret.expose().as_bytes(), &aad)?;
        let sealed = Sealed {
            kdf: self.kdf.clone(),
            nonce,
            ciphertext,
        };
        let json = serde_json::to_vec(&sealed).map_err(|e| KeyStoreError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        Ok(format!("{SEALED}{}", B64.encode(json)))
    }

    /// Opens what [`seal`](Self::seal) sealed for `context`, under this store's passphrase (a
    /// value sealed by another machine's store with the same passphrase opens too, at the cost
    /// of one more key derivation).
    pub fn unseal(&self, context: &str, sealed: &str) -> Result<Secret, KeyStoreError> {
        let bad = |reason: &str| KeyStoreError::Unsealable {
            context: context.to_owned(),
            reason: reason.to_owned(),
        };
        let body = sealed
            .strip_prefix(SEALED)
            .ok_or_else(|| bad("it is not a sealed value of this version"))?;
        let json = B64.decode(body).map_err(|_| bad("it is not base64"))?;
        let s: Sealed = serde_json::from_slice(&json).map_err(|e| bad(&e.to_string()))?;
        let key = if s.kdf == self.kdf {
            self.key.clone()
        } else {
            if s.kdf.algorithm != "argon2id" {
                return Err(bad("it was not sealed with argon2id"));
            }
            derive(&self.path, &s.kdf, &self.passphrase).map_err(|e| bad(&e.to_string()))?
        };
        let plain = decrypt(&key, &s.nonce, &s.ciphertext, &sealed_aad(context, &s.kdf))
            .map_err(|reason| bad(&reason))?
            .ok_or_else(|| {
                bad("it was sealed under another passphrase, for another provider, or altered")
            })?;
        let text = std::str::from_utf8(&plain).map_err(|_| bad("it is not text"))?;
        Ok(Secret::new(text))
    }
}

/// Seals `msg` under `key` and a fresh random nonce, bound to `aad`: the nonce and the
/// ciphertext, in base64.
fn encrypt(
    path: &Path,
    key: &[u8; 32],
    msg: &[u8],
    aad: &[u8],
) -> Result<(String, String), KeyStoreError> {
    let mut nonce = [0u8; 24];
    random(path, &mut nonce)?;
    let ciphertext = XChaCha20Poly1305::new(key.into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg, aad })
        .map_err(|_| KeyStoreError::Io {
            path: path.to_owned(),
            source: std::io::Error::other("encryption failed"),
        })?;
    Ok((B64.encode(nonce), B64.encode(ciphertext)))
}

/// Opens what [`encrypt`] sealed. `Err` says why the nonce or ciphertext is malformed;
/// `Ok(None)` means the key or the associated data do not match (or a byte was changed).
fn decrypt(
    key: &[u8; 32],
    nonce: &str,
    ciphertext: &str,
    aad: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    let nonce = B64
        .decode(nonce)
        .ok()
        .filter(|n| n.len() == 24)
        .ok_or("the nonce is not 24 bytes of base64")?;
    let ciphertext = B64
        .decode(ciphertext)
        .map_err(|e| format!("the ciphertext is not base64: {e}"))?;
    Ok(XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new))
}

fn sealed_aad(context: &str, kdf: &Kdf) -> Vec<u8> {
    let mut aad = format!("{SEALED}{context}:").into_bytes();
    aad.extend(serde_json::to_vec(kdf).unwrap_or_default());
    aad
}

fn check_name(name: &str) -> Result<(), KeyStoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(KeyStoreError::BadName(name.to_owned()))
    }
}

fn derive(path: &Path, kdf: &Kdf, passphrase: &str) -> Result<Zeroizing<[u8; 32]>, KeyStoreError> {
    if passphrase.is_empty() {
        return Err(KeyStoreError::EmptyPassphrase);
    }
    let corrupt = |reason: String| KeyStoreError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if kdf.memory_kib > MAX_MEMORY_KIB || kdf.iterations > MAX_ITERATIONS {
        return Err(corrupt(format!(
            "key derivation asks for {} KiB and {} passes (at most {MAX_MEMORY_KIB} KiB and {MAX_ITERATIONS} passes)",
            kdf.memory_kib, kdf.iterations
        )));
    }
    let salt = B64
        .decode(&kdf.salt)
        .map_err(|e| corrupt(format!("the salt is not base64: {e}")))?;
    let params = Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| corrupt(format!("key derivation parameters: {e}")))?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), &salt, &mut *key)
        .map_err(|e| corrupt(format!("key derivation: {e}")))?;
    Ok(key)
}

/// Fills `buf` from the operating system's random source.
fn random(path: &Path, buf: &mut [u8]) -> Result<(), KeyStoreError> {
    getrandom::fill(buf).map_err(|e| KeyStoreError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(format!("the random source failed: {e}")),
    })
}

/// Writes `bytes` to a new file only its owner can read, flushed to disk.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()
}
