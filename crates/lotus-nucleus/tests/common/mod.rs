//! Nuclei on a real Redis bus, for the tests of several nodes.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lotus_bus::{LocalBus, SqliteLog};
use lotus_bus_redis::{RedisBridge, RedisBusConfig};
use lotus_core::{Manifest, Pattern};
use lotus_nucleus::{
    Module, ModuleDef, NativeHost, NativeModule, Nucleus, NucleusBuilder, NucleusSettings, Origin,
    StateStore,
};

pub struct Node {
    pub nucleus: Nucleus,
    pub bridge: Arc<RedisBridge>,
    _dir: tempfile::TempDir,
}

/// The nucleus of node `name` (with `labels`) on the bus at `url`, namespace `ns`, with
/// `durable` topics, running the native module of manifest `yaml`, made by `factory`.
pub async fn node(
    url: &str,
    ns: &str,
    name: &str,
    labels: &[&str],
    durable: &str,
    yaml: &str,
    factory: fn() -> Box<dyn Module>,
) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    let bus = LocalBus::new();
    let mut cfg = RedisBusConfig::new(url, name);
    cfg.namespace = ns.to_owned();
    cfg.labels = labels.clone();
    cfg.durable = vec![Pattern::new(durable).expect("pattern")];
    cfg.heartbeat = Duration::from_millis(200);
    cfg.node_ttl = Duration::from_secs(1);
    let bridge = RedisBridge::connect(cfg, &bus).await.expect("join the bus");
    let manifest = Manifest::parse(yaml, Path::new("test.yaml")).expect("manifest");
    let entry = manifest
        .entry
        .clone()
        .expect("the manifest names its entry");
    let nucleus = NucleusBuilder::new(NucleusSettings {
        node: name.to_owned(),
        labels,
        tool_timeout: Duration::from_secs(5),
        ..NucleusSettings::default()
    })
    .bus(bus)
    .log(Arc::new(
        SqliteLog::open(&dir.path().join("streams.db")).expect("log"),
    ))
    .state(StateStore::open(&dir.path().join("state.db")).expect("state"))
    .host(NativeHost::new().with_entry(
        &entry,
        NativeModule {
            manifest: "name: unused\nversion: 0.0.0\ntype: core\n",
            factory,
        },
    ))
    .module(ModuleDef {
        manifest: Arc::new(manifest),
        origin: Origin::Builtin,
    })
    .build()
    .expect("nucleus");
    nucleus.start().await;
    assert!(bridge.ready(Duration::from_secs(5)).await);
    Node {
        nucleus,
        bridge,
        _dir: dir,
    }
}
