//! The guest side of `#[module]`, driven through the component's `guest` interface on the host
//! (calls that reach the host's imports only run inside a real component: see lotus-wasm's tests).

use lotus_module_sdk::__private::Adapter;
use lotus_module_sdk::bindings::exports::lotus::module::guest::{Event, Guest};
use lotus_module_sdk::{ModuleError, Value, json};

#[derive(Default)]
struct Calc {
    total: i64,
    seen: Vec<String>,
}

#[lotus_module_sdk::module]
impl Calc {
    /// Adds `n` to the running total.
    #[tool("add")]
    fn add(&mut self, n: i64) -> Result<i64, ModuleError> {
        self.total += n;
        Ok(self.total)
    }

    /// The topics seen so far.
    #[tool]
    async fn seen(&mut self) -> Result<Vec<String>, ModuleError> {
        Ok(self.seen.clone())
    }

    #[on_event("calc.>")]
    fn on_calc(&mut self, ev: lotus_module_sdk::Event) -> Result<(), ModuleError> {
        if ev.payload["fail"] == json!(true) {
            return Err(ModuleError::msg("asked to fail"));
        }
        self.seen.push(ev.topic);
        Ok(())
    }

    #[periodic(every = "5s")]
    fn beat(&mut self) {}
}

type G = Adapter<Calc>;

fn event(topic: &str, payload: Value) -> Event {
    Event {
        id: "0".into(),
        topic: topic.into(),
        source: "test".into(),
        time_us: 0,
        payload: payload.to_string(),
        correlation_id: None,
    }
}

#[test]
fn a_guest_module_describes_itself_and_runs_its_methods() {
    let d = G::describe();
    assert_eq!(
        d.handlers
            .iter()
            .map(|h| (h.name.as_str(), h.pattern.as_str()))
            .collect::<Vec<_>>(),
        [("on_calc", "calc.>")]
    );
    let tools: Vec<_> = d.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(tools, ["add", "seen"]);
    assert_eq!(d.tools[0].description, "Adds `n` to the running total.");
    let schema: Value = serde_json::from_str(&d.tools[0].input_schema).expect("json");
    assert_eq!(schema["required"], json!(["n"]));
    assert_eq!(schema["properties"]["n"]["type"], json!("integer"));
    assert_eq!(
        d.jobs
            .iter()
            .map(|j| (j.name.as_str(), j.every_ms))
            .collect::<Vec<_>>(),
        [("beat", 5000)]
    );

    assert!(
        G::call_tool("add".into(), r#"{"n":1}"#.into())
            .expect_err("before initialize")
            .contains("before `initialize`")
    );
    G::initialize("{}".into()).expect("initialize");
    assert_eq!(
        G::call_tool("add".into(), r#"{"n":2}"#.into()),
        Ok("2".into())
    );
    assert_eq!(
        G::call_tool("add".into(), r#"{"n":3}"#.into()),
        Ok("5".into())
    );
    let err = G::call_tool("add".into(), r#"{"m":3}"#.into()).expect_err("unknown field");
    assert!(
        err.contains("invalid arguments for `add`") && err.contains("`m`"),
        "{err}"
    );
    let err = G::call_tool("add".into(), "[1]".into()).expect_err("not an object");
    assert!(err.contains("expected a JSON object"), "{err}");
    let err = G::call_tool("nope".into(), "{}".into()).expect_err("no such tool");
    assert_eq!(err, "no tool `nope`");

    G::on_event(0, event("calc.one", json!({}))).expect("handled");
    let err = G::on_event(0, event("calc.two", json!({"fail": true}))).expect_err("fails");
    assert_eq!(err, "asked to fail");
    assert_eq!(
        G::call_tool("seen".into(), "null".into()),
        Ok(r#"["calc.one"]"#.into())
    );
    G::tick(0).expect("tick");
    G::shutdown().expect("shutdown");

    let err = G::initialize("not json".into()).expect_err("bad settings");
    assert!(err.contains("settings are not JSON"), "{err}");
}
