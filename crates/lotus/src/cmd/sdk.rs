//! The guest SDK (`lotus-module-sdk`, its macros and the WIT it builds against), carried inside
//! the binary and unpacked under `$LOTUS_HOME/sdk/<lotus version>/` for module projects to use as
//! a path dependency. The layout mirrors the source tree, so the SDK's relative paths hold.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::home::Home;

/// Every file of the SDK, by its path in the source tree.
const FILES: [(&str, &str); 5] = [
    (
        "crates/lotus-macros/Cargo.toml",
        include_str!("../../../lotus-macros/Cargo.toml"),
    ),
    (
        "crates/lotus-macros/src/lib.rs",
        include_str!("../../../lotus-macros/src/lib.rs"),
    ),
    (
        "sdk/lotus-module-sdk/Cargo.toml",
        include_str!("../../../../sdk/lotus-module-sdk/Cargo.toml"),
    ),
    (
        "sdk/lotus-module-sdk/src/lib.rs",
        include_str!("../../../../sdk/lotus-module-sdk/src/lib.rs"),
    ),
    (
        "wit/lotus-module/0.2.0/module.wit",
        include_str!("../../../../wit/lotus-module/0.2.0/module.wit"),
    ),
];

/// The WIT API version the SDK builds against.
pub const API_VERSION: &str = "0.2.0";

/// Where this lotus unpacks its SDK.
pub fn root(home: &Home) -> PathBuf {
    home.root()
        .join("sdk")
        .join(concat!("lotus-", env!("CARGO_PKG_VERSION")))
}

/// Unpacks the SDK (rewriting any file that differs) and returns the `lotus-module-sdk` crate's
/// folder.
pub fn ensure(home: &Home) -> Result<PathBuf> {
    let root = root(home);
    for (rel, text) in FILES {
        let file = root.join(rel);
        if std::fs::read_to_string(&file).is_ok_and(|t| t == text) {
            continue;
        }
        write(&file, text)
            .with_context(|| format!("cannot unpack the SDK to {}", file.display()))?;
    }
    Ok(root.join("sdk/lotus-module-sdk"))
}

fn write(file: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, file)
}
