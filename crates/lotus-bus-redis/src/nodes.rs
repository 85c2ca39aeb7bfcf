//! Nodes report themselves: `NS:node:ID` holds what a node hosts and expires unless renewed;
//! `NS:nodes` lists the ids. The same beat trims durable streams by age and reads the
//! consumer groups' lag.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use lotus_bus::{NodeStatus, Scope};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::link::{Backoff, connect};
use crate::{RedisBusConfig, RedisBusError, Shared};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn node_key(prefix: &str, node: &str) -> String {
    format!("{prefix}:node:{node}")
}

/// Refuses a node id that a live nucleus (another instance) reports.
pub(crate) async fn claim_id(
    conn: &mut MultiplexedConnection,
    cfg: &RedisBusConfig,
    instance: Uuid,
) -> Result<(), RedisBusError> {
    let unreachable = |e: redis::RedisError| RedisBusError::Unreachable {
        url: crate::redact(&cfg.url),
        reason: e.to_string(),
    };
    let held: Option<String> = conn
        .get(node_key(&cfg.namespace, &cfg.node))
        .await
        .map_err(unreachable)?;
    let Some(held) = held.and_then(|s| serde_json::from_str::<Value>(&s).ok()) else {
        return Ok(());
    };
    if held["instance"].as_str() == Some(instance.to_string().as_str()) {
        return Ok(());
    }
    // A nucleus of this host that has died (its report has not expired yet) holds nothing.
    let here = hostname();
    if held["host"]
        .as_str()
        .is_some_and(|h| Some(h) == here.as_deref())
        && held["pid"]
            .as_u64()
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    {
        return Ok(());
    }
    Err(RedisBusError::NodeTaken {
        node: cfg.node.clone(),
        holder: format!(
            "pid {} on {}, reported {} ms ago",
            held["pid"],
            held["host"].as_str().unwrap_or("?"),
            now_ms().saturating_sub(held["at"].as_u64().unwrap_or(0))
        ),
    })
}

/// This machine's host name.
pub fn hostname() -> Option<String> {
    rustix::system::uname()
        .nodename()
        .to_str()
        .ok()
        .map(str::to_owned)
}

/// A node id for this machine when none is configured: its host name, with every character
/// that cannot be in a topic token made `-`.
pub fn default_node_id() -> String {
    let id: String = hostname()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() { "node".into() } else { id }
}

/// What this node reports.
fn report(sh: &Shared) -> Value {
    let subscriptions: Vec<String> = {
        let subs = sh.subs.lock();
        let mut out: Vec<String> = subs
            .values()
            .filter(|s| s.scope != Scope::Node)
            .flat_map(|s| s.patterns.iter().map(|p| p.to_string()))
            .collect();
        out.sort();
        out.dedup();
        out
    };
    let hosted = sh.reporter.lock().as_ref().map_or(Value::Null, |r| r());
    // Groups read here: entries pending on this node for any other group are claimable.
    let groups: Vec<String> = {
        let readers = sh.readers.lock();
        let subs = sh.subs.lock();
        let mut out: Vec<String> = readers
            .keys()
            .filter_map(|id| subs.get(id).map(|s| s.name.to_string()))
            .collect();
        out.sort();
        out.dedup();
        out
    };
    json!({
        "node": sh.cfg.node,
        "instance": sh.instance.to_string(),
        "labels": sh.cfg.labels,
        "pid": std::process::id(),
        "host": hostname(),
        "version": env!("CARGO_PKG_VERSION"),
        "started": sh.started.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "at": now_ms(),
        "subscriptions": subscriptions,
        "groups": groups,
        "hosted": hosted,
    })
}

/// One beat: report this node, read the others.
pub(crate) async fn beat(sh: &Shared, conn: &mut MultiplexedConnection) -> bool {
    let prefix = sh.prefix().to_owned();
    let me = report(sh);
    let ttl = u64::try_from(sh.cfg.node_ttl.as_millis()).unwrap_or(5000);
    let r: redis::RedisResult<Vec<String>> = redis::pipe()
        .cmd("SET")
        .arg(node_key(&prefix, &sh.cfg.node))
        .arg(me.to_string())
        .arg("PX")
        .arg(ttl)
        .ignore()
        .cmd("SADD")
        .arg(format!("{prefix}:nodes"))
        .arg(&sh.cfg.node)
        .ignore()
        .cmd("SMEMBERS")
        .arg(format!("{prefix}:nodes"))
        .query_async::<(Vec<String>,)>(conn)
        .await
        .map(|(ids,)| ids);
    let ids = match r {
        Ok(ids) => ids,
        Err(e) => {
            sh.error("heartbeat", &e);
            return false;
        }
    };
    let keys: Vec<String> = ids.iter().map(|id| node_key(&prefix, id)).collect();
    let infos: Vec<Option<String>> = if keys.is_empty() {
        Vec::new()
    } else {
        match redis::cmd("MGET").arg(&keys).query_async(conn).await {
            Ok(v) => v,
            Err(e) => {
                sh.error("heartbeat", &e);
                return false;
            }
        }
    };
    let now = now_ms();
    let mut nodes = Vec::new();
    let mut gone = Vec::new();
    for (id, info) in ids.iter().zip(infos) {
        match info.and_then(|s| serde_json::from_str::<Value>(&s).ok()) {
            Some(info) => nodes.push(NodeStatus {
                node: id.clone(),
                local: *id == sh.cfg.node,
                labels: info["labels"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
                age_ms: now.saturating_sub(info["at"].as_u64().unwrap_or(0)),
                info,
            }),
            None => gone.push(id.clone()),
        }
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    *sh.remote_patterns.write() = nodes
        .iter()
        .filter(|n| !n.local)
        .flat_map(|n| {
            n.info["subscriptions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|p| p.as_str().and_then(|p| lotus_core::Pattern::new(p).ok()))
        .collect();
    *sh.nodes.write() = nodes;
    if !gone.is_empty() {
        let _: redis::RedisResult<()> = conn.srem(format!("{prefix}:nodes"), gone).await;
    }
    true
}

/// Consumer-group figures of every durable stream, and trimming by age.
async fn groups(sh: &Shared, conn: &mut MultiplexedConnection, trim: bool) {
    let mut out = Vec::new();
    let min_id = now_ms().saturating_sub(u64::try_from(sh.cfg.retention.as_millis()).unwrap_or(0));
    for i in 0..sh.cfg.durable.len() {
        let key = sh.stream_key(i);
        if trim {
            let _: redis::RedisResult<()> = redis::cmd("XTRIM")
                .arg(&key)
                .arg("MINID")
                .arg("~")
                .arg(min_id)
                .query_async(conn)
                .await;
        }
        let len: u64 = conn.xlen(&key).await.unwrap_or(0);
        let info: redis::RedisResult<Vec<redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(conn)
            .await;
        for g in info.unwrap_or_default() {
            let Ok(map) =
                redis::from_redis_value::<std::collections::HashMap<String, redis::Value>>(g)
            else {
                continue;
            };
            let int = |k: &str| {
                map.get(k)
                    .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
            };
            let name = map
                .get("name")
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .unwrap_or_default();
            out.push(json!({
                "stream": sh.cfg.durable[i].to_string(),
                "group": name,
                "length": len,
                "pending": int("pending"),
                "lag": int("lag"),
            }));
        }
    }
    *sh.lag.write() = Value::Array(out);
}

/// Beats every `heartbeat` until the bridge closes.
pub(crate) async fn heartbeat(sh: Arc<Shared>) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = Backoff::new();
    let mut beats: u64 = 0;
    while !sh.stopped() {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(&sh.client).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    sh.error("heartbeat connection", &e);
                    if !backoff.wait(&sh).await {
                        return;
                    }
                    continue;
                }
            },
        };
        if beat(&sh, c).await {
            backoff.reset();
            groups(&sh, c, beats.is_multiple_of(60)).await;
            beats += 1;
        } else {
            conn = None;
            if !backoff.wait(&sh).await {
                return;
            }
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(sh.cfg.heartbeat) => {}
            _ = sh.stop.notified() => return,
        }
    }
}

/// Removes this node's report, so that the others treat it as gone at once.
pub(crate) async fn leave(sh: &Shared, conn: &mut MultiplexedConnection) {
    let prefix = sh.prefix();
    let _: redis::RedisResult<()> = redis::pipe()
        .del(node_key(prefix, &sh.cfg.node))
        .ignore()
        .srem(format!("{prefix}:nodes"), &sh.cfg.node)
        .ignore()
        .query_async(conn)
        .await;
}
