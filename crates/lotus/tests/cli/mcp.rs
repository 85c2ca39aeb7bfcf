//! MCP servers as modules under `lotus up` (issue 9): a real server from PyPI.

use serde_json::Value;

use super::{Up, python_has, run};

#[test]
fn a_stdio_mcp_server_folder_offers_its_tools_under_lotus_up() {
    if !python_has("mcp_server_time") {
        return;
    }
    let home = tempfile::tempdir().expect("tempdir");
    let folder = home.path().join("modules/time");
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::write(
        folder.join("manifest.yaml"),
        "name: time\nversion: 0.1.0\ntype: integration\nruntime: mcp\nmcp:\n  command: python3\n  args: [\"-m\", \"mcp_server_time\", \"--local-timezone\", \"UTC\"]\n",
    )
    .expect("manifest");
    let (code, out, err) = run(
        home.path(),
        &["module", "validate", folder.to_str().expect("utf-8")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(mcp, integration)"), "{out}");

    let up = Up::start_in(home, &[]);
    let (code, out, err) = run(up.path(), &["tool", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let tools: Value = serde_json::from_str(&out).expect("json");
    let get = tools
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["name"] == "time.get_current_time")
        .cloned()
        .unwrap_or_else(|| panic!("no time.get_current_time in {out}"));
    assert!(
        get["input_schema"]["properties"]["timezone"].is_object(),
        "{get}"
    );

    let (code, out, err) = run(
        up.path(),
        &[
            "tool",
            "call",
            "time.get_current_time",
            r#"{"timezone":"Asia/Tokyo"}"#,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Asia/Tokyo"), "{out}");
    let (code, _, err) = run(
        up.path(),
        &[
            "tool",
            "call",
            "time.get_current_time",
            r#"{"timezone":"Nowhere/Atlantis"}"#,
        ],
    );
    assert_eq!(code, 1, "a refused call fails: {err}");
    assert!(err.contains("Nowhere/Atlantis"), "{err}");
}
