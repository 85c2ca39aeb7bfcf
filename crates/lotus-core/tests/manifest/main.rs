//! The broken-manifest corpus: every fixture fails with an error naming the expected key and a line.

use std::path::{Path, PathBuf};

use lotus_core::Manifest;

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/manifests")
        .join(kind);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture folder")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

#[test]
fn every_broken_manifest_names_its_key() {
    for file in fixtures("bad") {
        let text = std::fs::read_to_string(&file).expect("read fixture");
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect-key:"))
            .unwrap_or_else(|| panic!("{} lacks `# expect-key:`", file.display()))
            .trim();
        let err =
            Manifest::load(&file).expect_err(&format!("{} should be rejected", file.display()));
        let shown = err.to_string();
        eprintln!("{shown}");
        assert_eq!(err.key, expected, "{shown}");
        assert!(shown.starts_with(&file.display().to_string()), "{shown}");
        if !expected.is_empty() {
            assert!(err.line.is_some(), "no line in: {shown}");
            assert!(shown.contains(&format!("`{expected}`")), "{shown}");
        }
    }
}

#[test]
fn good_manifests_parse() {
    for file in fixtures("good") {
        let m = Manifest::load(&file).unwrap_or_else(|e| panic!("{e}"));
        assert!(!m.name.as_str().is_empty());
    }
}

#[test]
fn full_manifest_keeps_every_value() {
    let file = fixtures("good")
        .into_iter()
        .find(|f| f.ends_with("full.yaml"))
        .expect("full.yaml");
    let m = Manifest::load(&file).expect("valid");
    assert_eq!(m.version.to_string(), "1.2.3");
    assert_eq!(m.dependencies.modules[1].to_string(), "heartbeat@^0.1");
    assert_eq!(m.permissions.limits.queue, 256);
    assert_eq!(
        m.permissions.limits.overflow,
        lotus_core::Overflow::DropOldest
    );
    assert_eq!(
        m.permissions.limits.call_timeout,
        std::time::Duration::from_secs(10)
    );
    assert!(m.may_publish(&"weather.today".parse().expect("topic")));
    assert!(!m.may_publish(&"system.heartbeat".parse().expect("topic")));
    assert!(m.may_call_tool("echo.echo"));
    assert!(!m.may_call_tool("shell.run"));
    assert_eq!(m.providers.expect("providers").fallback.len(), 2);
    assert_eq!(m.placement.nodes, ["desk", "gpu-box"]);
    assert!(m.placement.allows("gpu-box", &["gpu".into(), "big".into()]));
    assert!(!m.placement.allows("gpu-box", &[]), "needs the gpu label");
    assert!(
        !m.placement.allows("laptop", &["gpu".into()]),
        "not a listed node"
    );
}

/// `docs/manifest.schema.json` is generated from the types; regenerate with `UPDATE_SCHEMA=1`.
#[test]
fn json_schema_in_docs_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/manifest.schema.json");
    let generated = serde_json::to_string_pretty(&Manifest::json_schema()).expect("json") + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("write schema");
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        stored == generated,
        "docs/manifest.schema.json is stale: run `UPDATE_SCHEMA=1 cargo test -p lotus-core --test manifest`"
    );
}
