//! Test support: builds the first-party guest modules in `modules/` from source.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds `modules/` for `wasm32-wasip2` once per process and returns the folder holding the
/// `.wasm` components. Uses `$CARGO_TARGET_DIR/modules` when set (CI's cache), else
/// `modules/target`. Panics with a hint when the build fails.
pub fn guest_components() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(|d| PathBuf::from(d).join("modules"))
            .unwrap_or_else(|| root.join("modules/target"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root.join("modules/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status();
        match status {
            Ok(s) if s.success() => target.join("wasm32-wasip2/release"),
            other => panic!(
                "building modules/ for wasm32-wasip2 failed ({other:?}); is the target installed? `rustup target add wasm32-wasip2`"
            ),
        }
    })
}
