//! One suite per tier, run against every backend of that tier. A backend that needs a service
//! is skipped only when the service is absent and `CI` is not set.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lotus_memory::chroma::ChromaVectors;
use lotus_memory::embedded::{
    EmbeddedVectors, InProcessWorking, IndexConfig, Quantization, SqliteKnowledge, SqliteShortTerm,
};
use lotus_memory::pg::PgKnowledge;
use lotus_memory::redis_tiers::{RedisShortTerm, RedisWorking};
use lotus_memory::{
    ForgetFilter, Kind, Knowledge, Memory, ModuleRecord, ProviderRecord, ShortTerm, StreamRecord,
    Turn, VectorItem, Vectors, Working, WorkingItem, now_us,
};
use serde_json::{Value, json};
use uuid::Uuid;

// ------------------------------------------------------------------ backends

/// A service's URL from `var` (or its default), if it answers; `None` (skip) only outside CI.
async fn service<T>(
    what: &str,
    var: &str,
    default: &str,
    connect: impl AsyncFnOnce(&str) -> lotus_memory::Result<T>,
) -> Option<T> {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    match connect(&url).await {
        Ok(t) => Some(t),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs {what} at {url} (set {var}): {e}"
            );
            eprintln!("skipping the {what} backend: {e}");
            None
        }
    }
}

const REDIS: (&str, &str, &str) = ("Redis", "LOTUS_TEST_REDIS", "redis://127.0.0.1:6379");
const POSTGRES: (&str, &str, &str) = (
    "PostgreSQL",
    "LOTUS_TEST_POSTGRES",
    "postgres://postgres@127.0.0.1:5432/test",
);

/// Keys of one test run: nothing left by another run is seen.
fn prefix() -> String {
    format!("lotus-test:{}:", Uuid::now_v7().simple())
}

async fn working_backends() -> Vec<Arc<dyn Working>> {
    let mut out: Vec<Arc<dyn Working>> = vec![Arc::new(InProcessWorking::new())];
    let (what, var, default) = REDIS;
    if let Some(r) = service(what, var, default, async |url: &str| {
        RedisWorking::connect(url, &prefix()).await
    })
    .await
    {
        out.push(Arc::new(r));
    }
    out
}

async fn short_backends(dir: &std::path::Path) -> Vec<Arc<dyn ShortTerm>> {
    let mut out: Vec<Arc<dyn ShortTerm>> = vec![Arc::new(
        SqliteShortTerm::open(&dir.join("short.db")).expect("sqlite short-term"),
    )];
    let (what, var, default) = REDIS;
    if let Some(r) = service(what, var, default, async |url: &str| {
        RedisShortTerm::connect(url, &prefix()).await
    })
    .await
    {
        out.push(Arc::new(r));
    }
    out
}

async fn vector_backends(dir: &std::path::Path) -> Vec<Arc<dyn Vectors>> {
    let mut v: Vec<Arc<dyn Vectors>> = vec![Arc::new(
        EmbeddedVectors::open(&dir.join("vectors"), IndexConfig::default()).expect("embedded"),
    )];
    match std::env::var("LOTUS_CHROMA_URL") {
        Ok(url) => {
            let chroma = ChromaVectors::connect(&url)
                .await
                .expect("LOTUS_CHROMA_URL is set: ChromaDB must answer")
                .with_prefix(format!("t{}_", Uuid::now_v7().simple()));
            v.push(Arc::new(chroma));
        }
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("ChromaDB is required in CI: start it and set LOTUS_CHROMA_URL")
        }
        Err(_) => eprintln!("skipping the ChromaDB vector backend: LOTUS_CHROMA_URL is not set"),
    }
    v
}

async fn knowledge_backends(dir: &std::path::Path) -> Vec<Arc<dyn Knowledge>> {
    let mut out: Vec<Arc<dyn Knowledge>> = vec![Arc::new(
        SqliteKnowledge::open(&dir.join("knowledge.db")).expect("sqlite knowledge"),
    )];
    let (what, var, default) = POSTGRES;
    if let Some(p) = service(what, var, default, async |url: &str| {
        PgKnowledge::connect(url).await
    })
    .await
    {
        out.push(Arc::new(p));
    }
    out
}

// ------------------------------------------------------------------ helpers

fn item(text: &str, memory: Option<Uuid>, at_us: i64) -> WorkingItem {
    WorkingItem {
        id: Uuid::now_v7(),
        memory_id: memory,
        role: "user".into(),
        text: text.into(),
        at_us,
    }
}

fn memory(user: &str, text: &str, fact: Option<(&str, &str, &str)>) -> Memory {
    let now = now_us();
    Memory {
        id: Uuid::now_v7(),
        user: user.into(),
        kind: Kind::Fact,
        text: text.into(),
        subject: fact.map(|f| f.0.into()),
        attribute: fact.map(|f| f.1.into()),
        value: fact.map(|f| f.2.into()),
        importance: 0.5,
        created_us: now,
        valid_from_us: now,
        valid_to_us: None,
        superseded_by: None,
        source: "test".into(),
        metadata: BTreeMap::from([("topic".into(), json!("tools"))]),
    }
}

/// A unit vector of `dims` pointing mostly along axis `axis`.
fn unit(dims: usize, axis: usize, wobble: f32) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dims)
        .map(|i| ((i * 7 + axis) % 5) as f32 * wobble)
        .collect();
    v[axis % dims] += 1.0;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn meta(user: &str) -> BTreeMap<String, Value> {
    BTreeMap::from([("user".to_owned(), json!(user))])
}

// ------------------------------------------------------------------ L1

#[tokio::test]
async fn working_memory_conformance() {
    for w in working_backends().await {
        let b = w.backend();
        let user = format!("u-{}", Uuid::now_v7());
        let other = format!("o-{}", Uuid::now_v7());
        let old = now_us() - 3_600_000_000;
        let m = Uuid::now_v7();
        w.push(&user, &item("oldest", None, old))
            .await
            .expect("push");
        for i in 0..120 {
            w.push(
                &user,
                &item(&format!("turn {i}"), (i == 119).then_some(m), now_us()),
            )
            .await
            .expect("push");
        }
        w.push(&other, &item("theirs", None, now_us()))
            .await
            .expect("push");
        let recent = w.recent(&user, 3).await.expect("recent");
        assert_eq!(
            recent.iter().map(|i| i.text.as_str()).collect::<Vec<_>>(),
            ["turn 119", "turn 118", "turn 117"],
            "{b}: newest first"
        );
        assert_eq!(
            w.recent(&user, 500).await.expect("recent").len(),
            100,
            "{b}: capped"
        );
        assert!(
            w.recent(&user, 500)
                .await
                .expect("recent")
                .iter()
                .all(|i| i.text != "theirs"),
            "{b}"
        );

        w.set(
            &user,
            "active_task",
            &json!({"goal": "ship"}),
            Duration::from_secs(60),
        )
        .await
        .expect("set");
        w.set(
            &user,
            "user_context",
            &json!("tired"),
            Duration::from_millis(50),
        )
        .await
        .expect("set");
        assert_eq!(
            w.get(&user, "active_task").await.expect("get"),
            Some(json!({"goal": "ship"})),
            "{b}"
        );
        assert_eq!(
            w.get(&other, "active_task").await.expect("get"),
            None,
            "{b}: per user"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            w.get(&user, "user_context").await.expect("get"),
            None,
            "{b}: expired"
        );

        assert_eq!(w.forget(&user, &[m]).await.expect("forget"), 1, "{b}");
        assert!(
            w.recent(&user, 1).await.expect("recent")[0].text != "turn 119",
            "{b}"
        );

        let cutoff = now_us() + 1;
        let taken = w.take_older(cutoff).await.expect("take");
        assert!(
            taken
                .iter()
                .any(|(u, i)| u == &user && i.text == "turn 118"),
            "{b}"
        );
        assert!(
            !taken
                .iter()
                .any(|(_, i)| i.text == "oldest" || i.text == "turn 19"),
            "{b}: beyond the cap, dropped"
        );
        assert!(
            taken.windows(2).all(|p| p[0].1.at_us <= p[1].1.at_us),
            "{b}: oldest first"
        );
        assert!(
            w.recent(&user, 10).await.expect("recent").is_empty(),
            "{b}: taken away"
        );
        w.push(&user, &item("again", None, now_us()))
            .await
            .expect("push");
        assert!(w.clear_user(&user).await.expect("clear") >= 1, "{b}");
        assert!(w.recent(&user, 10).await.expect("recent").is_empty(), "{b}");
        w.clear_user(&other).await.expect("clear");
    }
}

// ------------------------------------------------------------------ L2

#[tokio::test]
async fn short_term_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    for s in short_backends(dir.path()).await {
        let b = s.backend();
        let user = format!("u-{}", Uuid::now_v7());
        let other = format!("o-{}", Uuid::now_v7());
        let m = Uuid::now_v7();
        let t0 = now_us();
        for (i, (u, mem)) in [
            (&user, None),
            (&user, Some(m)),
            (&other, None),
            (&user, None),
        ]
        .into_iter()
        .enumerate()
        {
            s.append(&StreamRecord {
                id: Uuid::now_v7(),
                user: u.clone(),
                memory_id: mem,
                op: "remember".into(),
                text: format!("record {i}"),
                at_us: t0 + i as i64,
            })
            .await
            .expect("append");
        }
        let mine = s.range(&user, 0, 100).await.expect("range");
        assert_eq!(
            mine.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
            ["record 0", "record 1", "record 3"],
            "{b}: in order, one user"
        );
        assert_eq!(mine[1].memory_id, Some(m), "{b}");
        assert_eq!(
            s.range(&user, t0 + 2, 100).await.expect("range").len(),
            1,
            "{b}: since"
        );
        assert_eq!(
            s.range(&user, 0, 2).await.expect("range").len(),
            2,
            "{b}: limit"
        );
        assert_eq!(s.forget(&user, &[m]).await.expect("forget"), 1, "{b}");
        assert!(
            s.range(&user, 0, 100)
                .await
                .expect("range")
                .iter()
                .all(|r| r.memory_id != Some(m)),
            "{b}"
        );
        assert_eq!(
            s.trim(t0 + 1).await.expect("trim"),
            1,
            "{b}: the oldest is past retention"
        );
        assert_eq!(s.clear_user(&other).await.expect("clear"), 1, "{b}");
        assert_eq!(s.range(&user, 0, 100).await.expect("range").len(), 1, "{b}");
        s.clear_user(&user).await.expect("clear");
    }
}

// ------------------------------------------------------------------ L3

#[tokio::test]
async fn vector_store_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    for v in vector_backends(dir.path()).await {
        let b = v.backend();
        let col = format!("conf_{}", Uuid::now_v7().simple());
        let dims = 16;
        let ids: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
        let items: Vec<VectorItem> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| VectorItem {
                id: *id,
                vector: unit(dims, i % 8, 0.01 * (i / 8) as f32),
                meta: {
                    let mut m = meta(if i % 2 == 0 { "alice" } else { "bob" });
                    m.insert("kind".into(), json!("fact"));
                    m.insert("n".into(), json!(i));
                    m
                },
            })
            .collect();
        v.upsert(&col, &items).await.expect("upsert");
        assert_eq!(v.count(&col).await.expect("count"), 40, "{b}");

        // The nearest item to an item's own vector is itself, at similarity ≈ 1.
        let hits = v
            .query(&col, &items[5].vector, 3, &BTreeMap::new())
            .await
            .expect("query");
        assert_eq!(hits[0].0, ids[5], "{b}");
        assert!(
            (hits[0].1 - 1.0).abs() < 1e-3,
            "{b}: similarity {}",
            hits[0].1
        );
        assert!(hits.windows(2).all(|p| p[0].1 >= p[1].1), "{b}: best first");

        // Filters: only alice's items, never bob's.
        let hits = v
            .query(&col, &items[5].vector, 10, &meta("alice"))
            .await
            .expect("query");
        assert_eq!(hits.len(), 10, "{b}");
        let alice: Vec<Uuid> = ids.iter().step_by(2).copied().collect();
        assert!(
            hits.iter().all(|(id, _)| alice.contains(id)),
            "{b}: filter leaked"
        );
        let mut two = meta("bob");
        two.insert("n".into(), json!(7));
        let hits = v
            .query(&col, &items[0].vector, 5, &two)
            .await
            .expect("query");
        assert_eq!(
            hits.iter().map(|h| h.0).collect::<Vec<_>>(),
            [ids[7]],
            "{b}: and-filter"
        );

        // Upsert replaces: the same id with a new vector and metadata.
        let moved = VectorItem {
            id: ids[0],
            vector: unit(dims, 3, 0.0),
            meta: meta("alice"),
        };
        v.upsert(&col, std::slice::from_ref(&moved))
            .await
            .expect("re-upsert");
        assert_eq!(
            v.count(&col).await.expect("count"),
            40,
            "{b}: replaced, not added"
        );
        let hits = v
            .query(&col, &moved.vector, 1, &meta("alice"))
            .await
            .expect("query");
        assert_eq!(hits[0].0, ids[0], "{b}");

        // Deletes.
        assert_eq!(v.delete(&col, &ids[..3]).await.expect("delete"), 3, "{b}");
        assert_eq!(
            v.delete(&col, &ids[..3]).await.expect("delete"),
            0,
            "{b}: gone already"
        );
        let hits = v
            .query(&col, &items[1].vector, 40, &BTreeMap::new())
            .await
            .expect("query");
        assert!(
            hits.iter().all(|(id, _)| !ids[..3].contains(id)),
            "{b}: deleted items returned"
        );
        assert_eq!(
            v.delete_where(&col, &meta("bob")).await.expect("delete"),
            19,
            "{b}"
        );
        assert_eq!(v.count(&col).await.expect("count"), 18, "{b}");

        // Bad input is an error, not a panic, and changes nothing.
        let wrong = VectorItem {
            id: Uuid::now_v7(),
            vector: vec![1.0; dims + 1],
            meta: meta("alice"),
        };
        let e = v
            .upsert(&col, &[wrong])
            .await
            .expect_err("dimension mismatch");
        assert!(e.to_string().contains("dimension"), "{b}: {e}");
        let e = v
            .query(&col, &[1.0; 3], 5, &BTreeMap::new())
            .await
            .expect_err("bad query");
        assert!(e.to_string().contains("dimension"), "{b}: {e}");
        assert_eq!(v.count(&col).await.expect("count"), 18, "{b}");
        assert!(
            v.query("empty_collection", &[1.0; 4], 5, &BTreeMap::new())
                .await
                .expect("query")
                .is_empty(),
            "{b}"
        );
        v.flush().await.expect("flush");

        // Reset drops the collection whole; it can be filled again, even at another dimension.
        v.reset(&col).await.expect("reset");
        assert_eq!(v.count(&col).await.expect("count"), 0, "{b}");
        v.reset(&col).await.expect("resetting nothing is fine");
        v.upsert(
            &col,
            &[VectorItem {
                id: ids[0],
                vector: vec![0.5; dims * 2],
                meta: meta("alice"),
            }],
        )
        .await
        .expect("upsert after reset");
        assert_eq!(v.count(&col).await.expect("count"), 1, "{b}");
        v.reset(&col).await.expect("reset");
        assert!(v.reset("Bad Name").await.is_err(), "{b}");
    }
}

/// The embedded index survives a reopen with every acknowledged change, in every quantization.
#[tokio::test]
async fn the_embedded_index_reopens_with_its_changes() {
    for q in [Quantization::F32, Quantization::F16, Quantization::I8] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = IndexConfig {
            quantization: q,
            checkpoint_bytes: 4096,
            ..IndexConfig::default()
        };
        let ids: Vec<Uuid> = (0..64).map(|_| Uuid::now_v7()).collect();
        let vecs: Vec<Vec<f32>> = (0..64)
            .map(|i| unit(32, i % 32, 0.02 * (i / 32) as f32))
            .collect();
        {
            let v = EmbeddedVectors::open(dir.path(), config).expect("open");
            assert!(
                EmbeddedVectors::open(dir.path(), config).is_err(),
                "{q:?}: a second opener is refused"
            );
            for (id, vec) in ids.iter().zip(&vecs) {
                v.upsert(
                    "c",
                    &[VectorItem {
                        id: *id,
                        vector: vec.clone(),
                        meta: meta("a"),
                    }],
                )
                .await
                .expect("upsert");
            }
            v.delete("c", &ids[..4]).await.expect("delete");
            // Dropped without a flush: the log carries what the last checkpoint does not.
        }
        let v = EmbeddedVectors::open(dir.path(), config).expect("reopen");
        assert_eq!(v.count("c").await.expect("count"), 60, "{q:?}");
        for i in [4, 31, 63] {
            let hits = v.query("c", &vecs[i], 1, &meta("a")).await.expect("query");
            assert_eq!(hits[0].0, ids[i], "{q:?}: item {i}");
        }
        assert!(
            v.query("c", &vecs[0], 64, &meta("a"))
                .await
                .expect("query")
                .iter()
                .all(|h| h.0 != ids[0]),
            "{q:?}"
        );
        // A damaged snapshot or an index of another format is refused with the reason, and
        // the files are left as they were.
        v.flush().await.expect("flush");
        drop(v);
        let col = dir.path().join("c");
        let graph = std::fs::read_dir(&col)
            .expect("collection folder")
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("graph-"))
            })
            .expect("a graph snapshot");
        let good = std::fs::read(&graph).expect("read graph");
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        std::fs::write(&graph, &bad).expect("damage");
        let e = EmbeddedVectors::open(dir.path(), config)
            .expect("open is lazy")
            .count("c")
            .await
            .expect_err("a damaged graph is refused");
        assert!(e.to_string().contains("damaged"), "{q:?}: {e}");
        assert_eq!(std::fs::read(&graph).expect("read"), bad, "left as it was");
        std::fs::write(&graph, &good).expect("repair");
        let manifest = col.join("MANIFEST");
        let m = std::fs::read_to_string(&manifest).expect("manifest");
        let old = m.replace(",\"format\":2", "");
        assert_ne!(m, old, "the manifest names its format");
        std::fs::write(&manifest, old).expect("old manifest");
        let e = EmbeddedVectors::open(dir.path(), config)
            .expect("open is lazy")
            .count("c")
            .await
            .expect_err("an index of the earlier format is refused");
        assert!(e.to_string().contains("lotus memory reindex"), "{q:?}: {e}");
    }
}

// ------------------------------------------------------------------ L4

#[tokio::test]
async fn knowledge_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    for k in knowledge_backends(dir.path()).await {
        let b = k.backend();
        let user = format!("u-{}", Uuid::now_v7());
        let other = format!("o-{}", Uuid::now_v7());
        let helix = memory(
            &user,
            "my favourite editor is Helix",
            Some(("user", "favourite editor", "Helix")),
        );
        let tea = memory(&user, "I drink green tea every morning", None);
        let theirs = memory(
            &other,
            "my favourite editor is Emacs",
            Some(("user", "favourite editor", "Emacs")),
        );
        for m in [&helix, &tea, &theirs] {
            k.insert(m).await.expect("insert");
        }
        let got = k
            .get_many(&[helix.id, tea.id, Uuid::now_v7()])
            .await
            .expect("get");
        assert_eq!(got.len(), 2, "{b}");
        let back = got.iter().find(|m| m.id == helix.id).expect("helix");
        assert_eq!(back, &helix, "{b}: stored as given");

        assert_eq!(
            k.find_current_text(&user, "I drink green tea every morning")
                .await
                .expect("find")
                .map(|m| m.id),
            Some(tea.id),
            "{b}"
        );
        assert_eq!(
            k.find_current_text(&other, "I drink green tea every morning")
                .await
                .expect("find"),
            None,
            "{b}"
        );
        assert_eq!(
            k.current_fact(&user, "user", "favourite editor")
                .await
                .expect("fact")
                .map(|m| m.id),
            Some(helix.id),
            "{b}"
        );

        // Keyword search: stemmed, per user, ranked.
        let hits = k
            .keyword(&user, "which editors do I favour?", 10, false)
            .await
            .expect("keyword");
        assert_eq!(hits.first().map(|h| h.0), Some(helix.id), "{b}: {hits:?}");
        assert!(
            hits.iter().all(|h| h.0 != theirs.id),
            "{b}: another user's memory"
        );
        assert!(
            k.keyword(&user, "is it?", 10, false)
                .await
                .expect("keyword")
                .is_empty(),
            "{b}: only stop words"
        );
        assert!(
            k.keyword(&user, "\"unbalanced AND (", 10, false)
                .await
                .is_ok(),
            "{b}: syntax is not injected"
        );

        // Supersession: the newer value is current, the older is history.
        let zed = memory(
            &user,
            "my favourite editor is now Zed",
            Some(("user", "favourite editor", "Zed")),
        );
        k.insert(&zed).await.expect("insert");
        k.supersede(&helix.id, &zed.id, now_us())
            .await
            .expect("supersede");
        assert_eq!(
            k.current_fact(&user, "user", "favourite editor")
                .await
                .expect("fact")
                .map(|m| m.id),
            Some(zed.id),
            "{b}"
        );
        let history = k
            .fact_history(&user, "user", "favourite editor")
            .await
            .expect("history");
        assert_eq!(
            history.iter().map(|m| m.id).collect::<Vec<_>>(),
            [zed.id, helix.id],
            "{b}: newest first"
        );
        assert_eq!(history[1].superseded_by, Some(zed.id), "{b}");
        assert!(!history[1].is_current(), "{b}");
        let hits = k
            .keyword(&user, "favourite editor", 10, false)
            .await
            .expect("keyword");
        assert!(
            hits.iter().all(|h| h.0 != helix.id),
            "{b}: superseded is not current"
        );
        let hits = k
            .keyword(&user, "favourite editor", 10, true)
            .await
            .expect("keyword");
        assert!(
            hits.iter().any(|h| h.0 == helix.id),
            "{b}: unless asked for"
        );

        // Select, list, delete, counts.
        let sel = k
            .select(&ForgetFilter {
                user: user.clone(),
                subject: Some("user".into()),
                ..ForgetFilter::default()
            })
            .await
            .expect("select");
        assert_eq!(sel.len(), 2, "{b}");
        let sel = k
            .select(&ForgetFilter {
                user: user.clone(),
                ids: vec![tea.id, theirs.id],
                ..ForgetFilter::default()
            })
            .await
            .expect("select");
        assert_eq!(
            sel.iter().map(|m| m.id).collect::<Vec<_>>(),
            [tea.id],
            "{b}: never another user's"
        );
        assert_eq!(k.list(Some(&user)).await.expect("list").len(), 3, "{b}");
        let (n, superseded, _) = k.counts().await.expect("counts");
        assert!(n >= 4 && superseded >= 1, "{b}");
        assert_eq!(k.delete(&[tea.id, tea.id]).await.expect("delete"), 1, "{b}");
        assert!(
            k.keyword(&user, "green tea", 10, true)
                .await
                .expect("keyword")
                .is_empty(),
            "{b}: the keyword index forgets too"
        );

        // Profiles.
        k.profile_set(&user, "timezone", &json!("Europe/Lisbon"))
            .await
            .expect("profile");
        k.profile_set(&user, "timezone", &json!("Europe/Berlin"))
            .await
            .expect("profile");
        assert_eq!(
            k.profile(&user).await.expect("profile"),
            BTreeMap::from([("timezone".to_owned(), json!("Europe/Berlin"))]),
            "{b}"
        );
        assert!(k.profile(&other).await.expect("profile").is_empty(), "{b}");
        k.profile_set(&user, "name", &json!("Ada"))
            .await
            .expect("profile");
        assert!(
            k.profile_remove(&user, "timezone").await.expect("remove"),
            "{b}"
        );
        assert!(
            !k.profile_remove(&user, "timezone").await.expect("remove"),
            "{b}"
        );
        assert_eq!(
            k.profile(&user).await.expect("profile"),
            BTreeMap::from([("name".to_owned(), json!("Ada"))]),
            "{b}: one key removed, no row left for it"
        );
        assert_eq!(k.profile_clear(&user).await.expect("clear"), 1, "{b}");

        // The conversation history: per user and session, newest kept, forgotten with its memory.
        let turn = |u: &str, session: &str, role: &str, text: &str, at_us, memory_id| Turn {
            id: Uuid::now_v7(),
            user: u.to_owned(),
            session: session.to_owned(),
            role: role.to_owned(),
            text: text.to_owned(),
            at_us,
            memory_id,
            meta: json!({"model": "scripted:one", "tokens": 12}),
        };
        let t0 = now_us();
        let turns = [
            turn(
                &user,
                "s1",
                "user",
                "Remember that my favourite editor is Helix.",
                t0,
                Some(helix.id),
            ),
            turn(
                &user,
                "s1",
                "assistant",
                "I will remember Helix.",
                t0 + 1,
                None,
            ),
            turn(
                &user,
                "s2",
                "user",
                "What is my favourite editor?",
                t0 + 2,
                None,
            ),
            turn(
                &other,
                "s1",
                "user",
                "my favourite editor is Emacs",
                t0 + 3,
                None,
            ),
        ];
        for t in &turns {
            k.history_append(t).await.expect("append");
        }
        let all = k.history(&user, None, 10).await.expect("history");
        assert_eq!(
            all,
            turns[..3].to_vec(),
            "{b}: oldest first, as stored, never another user's"
        );
        let s1 = k.history(&user, Some("s1"), 10).await.expect("history");
        assert_eq!(s1.len(), 2, "{b}");
        let newest = k.history(&user, None, 2).await.expect("history");
        assert_eq!(
            newest,
            turns[1..3].to_vec(),
            "{b}: the newest, oldest first"
        );
        assert_eq!(
            k.history_forget(&user, &[helix.id]).await.expect("forget"),
            1,
            "{b}"
        );
        assert!(
            k.history(&user, None, 10)
                .await
                .expect("history")
                .iter()
                .all(|t| t.id != turns[0].id),
            "{b}: the turn that became a forgotten memory is gone"
        );
        assert_eq!(k.history_clear(&user).await.expect("clear"), 2, "{b}");
        assert_eq!(
            k.history(&other, None, 10).await.expect("history").len(),
            1,
            "{b}"
        );
        k.history_clear(&other).await.expect("clear");

        // The module registry: entries in order, per module.
        let module = format!("m{}", Uuid::now_v7().simple());
        let other_module = format!("{module}x");
        let entry = |name: &str, action: &str, version: &str, at_us: i64| ModuleRecord {
            name: name.to_owned(),
            action: action.into(),
            version: version.into(),
            hash: format!("{version}-hash"),
            runtime: "wasm".into(),
            at_us,
        };
        let entries = [
            entry(&module, "install", "1.0.0", t0),
            entry(&other_module, "install", "0.1.0", t0 + 1),
            entry(&module, "install", "1.1.0", t0 + 2),
            // The same moment: the order of appending decides.
            entry(&module, "rollback", "1.0.0", t0 + 2),
        ];
        for e in &entries {
            k.registry_append(e).await.expect("registry");
        }
        assert_eq!(
            k.registry(Some(&module)).await.expect("registry"),
            [entries[0].clone(), entries[2].clone(), entries[3].clone()],
            "{b}: one module's history, oldest first"
        );
        let all = k.registry(None).await.expect("registry");
        let ours: Vec<&ModuleRecord> = all
            .iter()
            .filter(|e| e.name == module || e.name == other_module)
            .collect();
        assert_eq!(ours, entries.iter().collect::<Vec<_>>(), "{b}");

        // Provider configurations: replaced by name, the sealed key kept verbatim, removed.
        let provider = format!("p{}", Uuid::now_v7().simple());
        let mut p = ProviderRecord {
            name: provider.clone(),
            settings: serde_json::json!({"base_url": "http://127.0.0.1:9/v1", "model": "gpt-x"}),
            sealed_key: Some("lotus-sealed:v1:c2FsdA:bm9uY2U:Y2lwaGVy".into()),
            updated_us: t0,
        };
        k.provider_put(&p).await.expect("provider");
        let find = |all: Vec<ProviderRecord>| all.into_iter().find(|r| r.name == provider);
        assert_eq!(
            find(k.providers().await.expect("providers")),
            Some(p.clone()),
            "{b}"
        );
        p.settings = serde_json::json!({"model": "gpt-y"});
        p.sealed_key = None;
        p.updated_us = t0 + 5;
        k.provider_put(&p).await.expect("provider");
        assert_eq!(
            find(k.providers().await.expect("providers")),
            Some(p.clone()),
            "{b}: replaced whole"
        );
        assert!(k.provider_remove(&provider).await.expect("remove"), "{b}");
        assert!(!k.provider_remove(&provider).await.expect("remove"), "{b}");
        assert_eq!(find(k.providers().await.expect("providers")), None, "{b}");

        k.delete(&[helix.id, zed.id, theirs.id])
            .await
            .expect("cleanup");
    }
}
