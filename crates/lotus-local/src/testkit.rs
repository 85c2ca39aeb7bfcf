//! For tests of crates that need the real local models.

use std::path::PathBuf;
use std::sync::Mutex;

/// The folder holding `names`, pulled once per machine into `$LOTUS_TEST_MODELS`,
/// `$CARGO_TARGET_DIR/test-models` or `target/test-models`; `None` when pip cannot fetch them
/// and `CI` is not set (under `CI` that panics: the tests must not be skipped there).
pub fn models(names: &[&str]) -> Option<PathBuf> {
    static PULLING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = PULLING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::var_os("LOTUS_TEST_MODELS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("test-models"))
        })
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models")
        });
    for name in names {
        if crate::ready(&dir, name) {
            continue;
        }
        if let Err(e) = crate::pull(&dir, name, None, &|s| eprintln!("{s}")) {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to pull `{name}`: {e}"
            );
            eprintln!("skipping the tests that need the local model `{name}`: {e}");
            return None;
        }
    }
    Some(dir)
}
