//! `kill -9` at any moment leaves the embedded vector index loadable, with every change that
//! was acknowledged. A child process (this test binary, re-run) writes and checkpoints as fast
//! as it can; the parent kills it at varying moments and reopens the index.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lotus_memory::embedded::{EmbeddedVectors, IndexConfig};
use lotus_memory::{VectorItem, Vectors};
use serde_json::json;
use uuid::Uuid;

const DIMS: usize = 48;

fn config() -> IndexConfig {
    // Small checkpoints: the child is often killed while writing one.
    IndexConfig {
        checkpoint_bytes: 24 << 10,
        ..IndexConfig::default()
    }
}

/// A vector determined by the id.
fn vector(id: &Uuid) -> Vec<f32> {
    let mut state = u64::from_le_bytes(id.as_bytes()[8..16].try_into().expect("8 bytes")) | 1;
    let v: Vec<f32> = (0..DIMS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// The child: writes until killed, printing each acknowledged id.
#[tokio::test]
async fn crash_child_writer() {
    let Some(dir) = std::env::var_os("LOTUS_CRASH_CHILD") else {
        return;
    };
    let v = EmbeddedVectors::open(std::path::Path::new(&dir), config()).expect("child open");
    let mut out = std::io::stdout().lock();
    loop {
        let batch: Vec<VectorItem> = (0..4)
            .map(|_| {
                let id = Uuid::now_v7();
                VectorItem {
                    id,
                    vector: vector(&id),
                    meta: BTreeMap::from([("user".to_owned(), json!("crash"))]),
                }
            })
            .collect();
        v.upsert("c", &batch).await.expect("upsert");
        for it in &batch {
            writeln!(out, "ACK {}", it.id).expect("stdout");
        }
        out.flush().expect("flush");
    }
}

#[tokio::test]
async fn kill_9_at_any_moment_leaves_a_loadable_index() {
    if std::env::var_os("LOTUS_CRASH_CHILD").is_some() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut acked: Vec<Uuid> = Vec::new();
    for round in 0..8u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LOTUS_CRASH_CHILD", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the writer");
        let stdout = child.stdout.take().expect("stdout");
        let lifetime = Duration::from_millis(150 + round * 97);
        let reader = std::thread::spawn(move || {
            let mut ids = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("ACK ") {
                    ids.push(Uuid::parse_str(id).expect("uuid"));
                }
            }
            ids
        });
        let t0 = Instant::now();
        while t0.elapsed() < lifetime {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        acked.extend(reader.join().expect("reader"));

        let v = EmbeddedVectors::open(dir.path(), config())
            .unwrap_or_else(|e| panic!("round {round}: the index does not load: {e}"));
        let count = v.count("c").await.expect("count");
        assert!(
            count >= acked.len() as u64,
            "round {round}: {count} vectors, {} acknowledged",
            acked.len()
        );
        for id in acked.iter().rev().take(40).chain(acked.iter().take(10)) {
            let hits = v
                .query("c", &vector(id), 1, &BTreeMap::new())
                .await
                .expect("query");
            assert_eq!(
                hits.first().map(|h| h.0),
                Some(*id),
                "round {round}: {id} was lost"
            );
        }
    }
    assert!(
        acked.len() > 100,
        "the writer wrote too little to prove anything: {}",
        acked.len()
    );
}
