//! A real MCP server nobody here wrote (`mcp-server-time`, from PyPI) as a LOTUS module.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lotus_bus::SqliteLog;
use lotus_core::{Manifest, json};
use lotus_nucleus::{
    ModuleDef, ModuleState, NucleusBuilder, NucleusSettings, Origin, StateStore, ToolError,
};

/// Whether python3 has `module` (required in CI; elsewhere the test skips).
fn python_has(module: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs the Python package of `{module}`: pip install -r tests/python/requirements.txt"
        );
        eprintln!("skipping: no {module} (pip install -r tests/python/requirements.txt)");
    }
    ok
}

fn def(yaml: &str, dir: &Path) -> ModuleDef {
    ModuleDef {
        manifest: Arc::new(Manifest::parse(yaml, &dir.join("manifest.yaml")).expect("manifest")),
        origin: Origin::Folder(dir.to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tools_of_a_stdio_server_are_lotus_tools() {
    if !python_has("mcp_server_time") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let time = def(
        "name: time\nversion: 0.1.0\ntype: integration\nruntime: mcp\nmcp:\n  command: python3\n  args: [\"-m\", \"mcp_server_time\", \"--local-timezone\", \"UTC\"]\n",
        dir.path(),
    );
    let broken = def(
        "name: nothing\nversion: 0.1.0\ntype: integration\nruntime: mcp\nmcp:\n  command: lotus-no-such-program\n",
        dir.path(),
    );
    let n = NucleusBuilder::new(NucleusSettings {
        tool_timeout: Duration::from_secs(20),
        ..NucleusSettings::default()
    })
    .log(Arc::new(
        SqliteLog::open(&dir.path().join("streams.db")).expect("log"),
    ))
    .state(StateStore::open(&dir.path().join("state.db")).expect("state"))
    .host(lotus_mcp::McpHost::new())
    .module(time)
    .module(broken)
    .build()
    .expect("nucleus");
    let report = n.start().await;
    assert_eq!(report.started, ["time"], "{:?}", report.failed);
    let why = &report.failed[0].1;
    assert!(
        why.contains("lotus-no-such-program") && why.contains("PATH"),
        "{why}"
    );
    assert_eq!(
        n.module("nothing").expect("listed").state,
        ModuleState::Failed
    );

    // Its tools, with the server's own schemas.
    let tools = n.tools();
    let get = tools
        .iter()
        .find(|t| t.name == "time.get_current_time")
        .expect("time.get_current_time");
    assert_eq!(get.module, "time");
    assert!(get.description.to_lowercase().contains("time"), "{get:?}");
    assert!(
        get.input_schema["properties"]["timezone"].is_object(),
        "{get:?}"
    );
    assert!(tools.iter().any(|t| t.name == "time.convert_time"));

    // A call with a result, and one the server refuses.
    let out = n
        .call_tool("time.get_current_time", json!({"timezone": "Europe/Paris"}))
        .await
        .expect("call");
    assert!(
        out["text"].as_str().expect("text").contains("Europe/Paris"),
        "{out}"
    );
    assert_eq!(out["content"][0]["type"], "text", "{out}");
    let err = n
        .call_tool("time.get_current_time", json!({"timezone": "Mars/Olympus"}))
        .await
        .expect_err("no such zone");
    assert!(matches!(err, ToolError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("Mars/Olympus"), "{err}");
    let err = n
        .call_tool("time.get_current_time", json!(["not", "an", "object"]))
        .await
        .expect_err("bad arguments");
    assert!(matches!(err, ToolError::InvalidArguments { .. }), "{err}");

    n.shutdown().await.expect("shutdown");
}
