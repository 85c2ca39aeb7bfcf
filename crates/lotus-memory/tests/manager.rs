//! The memory manager over the embedded tiers with the real MiniLM embeddings: remembering,
//! recalling, superseding, forgetting everywhere, users kept apart, export and import.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use lotus_local::{EMBED_MODEL, LocalProvider};
use lotus_memory::embedded::{self, IndexConfig};
use lotus_memory::{
    ForgetFilter, Kind, ManagerConfig, MemoryManager, NewMemory, RecallQuery, RouterEmbedder,
};
use lotus_providers::{Catalog, Router, RouterConfig};

fn models() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| lotus_local::testkit::models(&[EMBED_MODEL]))
        .clone()
}

fn manager(models: &Path, dir: &Path) -> MemoryManager {
    let router = Arc::new(
        Router::new(Catalog::builtin(), RouterConfig::default(), None)
            .with_provider(Arc::new(LocalProvider::new(models))),
    );
    MemoryManager::new(
        embedded::open(dir, IndexConfig::default()).expect("tiers"),
        Arc::new(RouterEmbedder::new(router, "local:minilm", "memory")),
        ManagerConfig::default(),
    )
}

fn remember(user: &str, text: &str) -> NewMemory {
    NewMemory {
        user: user.into(),
        text: text.into(),
        source: Some("test".into()),
        ..NewMemory::default()
    }
}

#[tokio::test]
async fn remembers_supersedes_and_forgets_in_every_tier() {
    let Some(models) = models() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let helix_id = {
        let m = manager(&models, dir.path());
        for text in [
            "I drink green tea every morning",
            "the project deadline is on Friday",
            "my sister lives in Porto",
        ] {
            m.remember(remember("ana", text)).await.expect("remember");
        }
        let r = m
            .remember(remember("ana", "my favourite editor is Helix"))
            .await
            .expect("remember");
        assert_eq!(r.memory.attribute.as_deref(), Some("favourite editor"));
        let again = m
            .remember(remember("ana", "my favourite editor is Helix"))
            .await
            .expect("remember");
        assert!(again.duplicate, "the same memory is not stored twice");
        assert_eq!(again.memory.id, r.memory.id);
        m.flush().await.expect("flush");
        r.memory.id
    };

    // After a restart (the tiers reopened from disk) it is still found first.
    let m = manager(&models, dir.path());
    let hits = m
        .recall(&RecallQuery::new("ana", "which editor do I like?"))
        .await
        .expect("recall");
    assert_eq!(hits[0].memory.id, helix_id, "{hits:#?}");

    // A newer value supersedes it: Zed is current, Helix its history, never a current hit.
    let zed = m
        .remember(remember("ana", "my favourite editor is now Zed"))
        .await
        .expect("remember");
    assert_eq!(
        zed.superseded.iter().map(|s| s.id).collect::<Vec<_>>(),
        [helix_id]
    );
    let hits = m
        .recall(&RecallQuery::new("ana", "which editor do I like?"))
        .await
        .expect("recall");
    assert_eq!(hits[0].memory.id, zed.memory.id, "{hits:#?}");
    assert_eq!(
        hits[0].history.iter().map(|h| h.id).collect::<Vec<_>>(),
        [helix_id]
    );
    assert!(hits.iter().all(|h| h.memory.id != helix_id));
    let mut all = RecallQuery::new("ana", "which editor do I like?");
    all.include_superseded = true;
    let hits = m.recall(&all).await.expect("recall");
    let old = hits
        .iter()
        .find(|h| h.memory.id == helix_id)
        .expect("asked for");
    assert_eq!(old.memory.superseded_by, Some(zed.memory.id));

    // Forgetting the fact forgets its history too, in every tier.
    let gone = m
        .forget(&ForgetFilter {
            user: "ana".into(),
            ids: vec![zed.memory.id],
            ..ForgetFilter::default()
        })
        .await
        .expect("forget");
    assert_eq!(gone.ids.len(), 2);
    assert_eq!(gone.vectors, 2);
    assert!(gone.short_term >= 2);
    let t = m.tiers();
    assert!(
        t.knowledge
            .get_many(&[helix_id, zed.memory.id])
            .await
            .expect("get")
            .is_empty()
    );
    assert!(
        t.short_term
            .range("ana", 0, 1000)
            .await
            .expect("range")
            .iter()
            .all(|r| !r.text.contains("editor"))
    );
    assert!(
        t.working
            .recent("ana", 100)
            .await
            .expect("recent")
            .iter()
            .all(|r| !r.text.contains("editor"))
    );
    all.include_superseded = true;
    let hits = m.recall(&all).await.expect("recall");
    assert!(
        hits.iter().all(|h| !h.memory.text.contains("editor")),
        "{hits:#?}"
    );
    let stats = m.stats().await.expect("stats");
    assert_eq!(stats.memories, 3);
    assert_eq!(stats.vectors["memories_semantic"], 3);
}

#[tokio::test]
async fn one_users_memories_never_reach_anothers_recall() {
    let Some(models) = models() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let m = manager(&models, dir.path());
    m.remember(remember("ana", "my favourite editor is Helix"))
        .await
        .expect("remember");
    m.remember(remember("ana", "my bank PIN is 4321"))
        .await
        .expect("remember");
    m.remember(remember("bo", "my favourite editor is Vim"))
        .await
        .expect("remember");
    let hits = m
        .recall(&RecallQuery::new("bo", "editor bank PIN Helix"))
        .await
        .expect("recall");
    assert!(!hits.is_empty());
    assert!(hits.iter().all(|h| h.memory.user == "bo"), "{hits:#?}");
    // Bo's fact about the same attribute supersedes nothing of Ana's.
    let ana = m
        .recall(&RecallQuery::new("ana", "which editor?"))
        .await
        .expect("recall");
    assert!(ana[0].memory.text.contains("Helix"));
    assert!(ana[0].history.is_empty());

    // Forgetting everything of one user leaves the other untouched.
    let gone = m
        .forget(&ForgetFilter {
            user: "ana".into(),
            all: true,
            ..ForgetFilter::default()
        })
        .await
        .expect("forget");
    assert_eq!(gone.ids.len(), 2);
    assert!(
        m.recall(&RecallQuery::new("ana", "editor"))
            .await
            .expect("recall")
            .is_empty()
    );
    assert_eq!(
        m.recall(&RecallQuery::new("bo", "editor"))
            .await
            .expect("recall")
            .len(),
        1
    );
}

#[tokio::test]
async fn export_and_import_keep_ids_and_history_and_bad_input_is_refused() {
    let Some(models) = models() else { return };
    let (a, b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let m = manager(&models, a.path());
    m.remember(remember("ana", "my favourite editor is Helix"))
        .await
        .expect("remember");
    let zed = m
        .remember(remember("ana", "my favourite editor is now Zed"))
        .await
        .expect("remember");
    m.remember(NewMemory {
        kind: Kind::Episodic,
        importance: Some(0.9),
        ..remember("ana", "we shipped version 1.0 on a rainy Tuesday")
    })
    .await
    .expect("remember");
    let exported = m.export(Some("ana")).await.expect("export");
    assert_eq!(exported.len(), 3);

    let n = manager(&models, b.path());
    assert_eq!(n.import(exported.clone()).await.expect("import"), 3);
    assert_eq!(
        n.import(exported.clone()).await.expect("import"),
        0,
        "idempotent"
    );
    assert_eq!(n.export(None).await.expect("export"), exported);
    let hits = n
        .recall(&RecallQuery::new("ana", "favourite editor"))
        .await
        .expect("recall");
    assert_eq!(hits[0].memory.id, zed.memory.id);
    assert_eq!(hits[0].history.len(), 1);
    let hits = n
        .recall(&RecallQuery {
            kinds: vec![Kind::Episodic],
            ..RecallQuery::new("ana", "when did we release?")
        })
        .await
        .expect("recall");
    assert_eq!(hits.len(), 1);

    // Rebuilding the vectors from the stored memories: every memory is embedded again and
    // recall answers as before.
    let total = n.export(None).await.expect("export").len() as u64;
    assert_eq!(n.reindex().await.expect("reindex"), total);
    let stats = n.stats().await.expect("stats");
    assert_eq!(stats.vectors.values().sum::<u64>(), total);
    let hits = n
        .recall(&RecallQuery::new("ana", "favourite editor"))
        .await
        .expect("recall after reindex");
    assert_eq!(hits[0].memory.id, zed.memory.id);

    for (bad, why) in [
        (remember("", "x"), "user"),
        (remember("ana", "   "), "empty"),
        (
            NewMemory {
                importance: Some(1.5),
                ..remember("ana", "x")
            },
            "importance",
        ),
        (remember("ana", &"x".repeat(20_000)), "at most"),
    ] {
        let e = m.remember(bad).await.expect_err(why);
        assert!(e.to_string().contains(why), "{e}");
    }
    let e = m
        .recall(&RecallQuery {
            k: 0,
            ..RecallQuery::new("ana", "x")
        })
        .await
        .expect_err("k");
    assert!(e.to_string().contains("k must be"), "{e}");
    let e = m
        .forget(&ForgetFilter {
            user: "ana".into(),
            ..ForgetFilter::default()
        })
        .await
        .expect_err("nothing said");
    assert!(e.to_string().contains("say what to forget"), "{e}");
    assert_eq!(
        m.stats().await.expect("stats").memories,
        3,
        "nothing changed"
    );
}

/// The quality benchmark's scenario, small: deterministic, and nothing forgotten or of another
/// user ever comes back.
#[tokio::test]
async fn the_quality_scenario_leaks_nothing() {
    let Some(models) = models() else { return };
    let a = lotus_memory::quality::generate(3, 2, 5);
    let b = lotus_memory::quality::generate(3, 2, 5);
    assert_eq!(
        a.questions.iter().map(|q| &q.text).collect::<Vec<_>>(),
        b.questions.iter().map(|q| &q.text).collect::<Vec<_>>()
    );
    assert!(a.questions.iter().any(|q| q.kind == "updated"));
    assert!(a.questions.iter().any(|q| q.kind == "forgotten"));
    let dir = tempfile::tempdir().expect("tempdir");
    let m = manager(&models, dir.path());
    let r = lotus_memory::quality::evaluate(&m, &a)
        .await
        .expect("evaluate");
    assert_eq!(r.forget_leaks, 0, "{r:?}");
    assert_eq!(r.cross_user_leaks, 0, "{r:?}");
    assert_eq!(r.stale_rate, 0.0, "{r:?}");
    assert!(r.recall_at_10 >= 0.9, "{r:?}");
}

/// A second hop: "what is my sister called?" finds "my sister is called Dana"; the memory about
/// Dana shares no word with the question and means nothing like it, and comes right after it,
/// linked through the first. Another user's memory of the same name is never linked.
#[tokio::test]
async fn recall_follows_the_first_hit_to_a_linked_memory() {
    let Some(models) = models() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let m = manager(&models, dir.path());
    for text in [
        "my sister is called Dana",
        "my sister sent photos of the football match",
        "the plumber fixed the boiler",
        "Dana keeps bees on her roof",
    ] {
        m.remember(remember("ana", text)).await.expect("remember");
    }
    m.remember(remember("bo", "Dana keeps goats"))
        .await
        .expect("remember");
    let hits = m
        .recall(&RecallQuery::new("ana", "what is my sister called?"))
        .await
        .expect("recall");
    let texts: Vec<&str> = hits.iter().map(|h| h.memory.text.as_str()).collect();
    assert_eq!(
        texts[..2],
        ["my sister is called Dana", "Dana keeps bees on her roof"],
        "{texts:?}"
    );
    assert_eq!(hits[1].via, Some(hits[0].memory.id));
    assert!(hits.iter().all(|h| h.memory.user == "ana"), "{texts:?}");
}

/// A conversation's turns are kept; a turn asking to remember is remembered at once and found
/// by recall; forgetting that memory removes the turn from the history too.
#[tokio::test]
async fn turns_are_kept_and_what_the_user_asks_to_remember_is_remembered() {
    let Some(models) = models() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let m = manager(&models, dir.path());
    let turn = |role: &str, text: &str| lotus_memory::NewTurn {
        user: "ana".into(),
        session: "s1".into(),
        role: role.into(),
        text: text.into(),
        meta: serde_json::Value::Null,
    };
    let said = m
        .observe(turn("user", "Remember that my favourite editor is Helix."))
        .await
        .expect("observe");
    let learned = said.learned.expect("remembered at once");
    assert_eq!(learned.memory.text, "my favourite editor is Helix");
    assert_eq!(
        learned.memory.attribute.as_deref(),
        Some("favourite editor")
    );
    let answered = m
        .observe(turn("assistant", "Noted: Helix."))
        .await
        .expect("observe");
    assert!(answered.learned.is_none(), "only the user's words are kept");
    let asked = m
        .observe(turn("user", "What is my favourite editor?"))
        .await
        .expect("observe");
    assert!(asked.learned.is_none(), "a question is not a fact");
    let hits = m
        .recall(&RecallQuery::new("ana", "which editor do I like?"))
        .await
        .expect("recall");
    assert_eq!(hits[0].memory.id, learned.memory.id);
    let history = m.history("ana", Some("s1"), 10).await.expect("history");
    assert_eq!(
        history.iter().map(|t| t.role.as_str()).collect::<Vec<_>>(),
        ["user", "assistant", "user"]
    );
    let recent = m.recent("ana", 10).await.expect("recent");
    assert_eq!(
        recent.iter().map(|t| t.role.as_str()).collect::<Vec<_>>(),
        ["user", "assistant", "user", "memory"],
        "newest first, with the memory the first turn made"
    );
    assert!(
        m.observe(turn("user", "  ")).await.is_err(),
        "an empty turn is refused"
    );

    let gone = m
        .forget(&ForgetFilter {
            user: "ana".into(),
            ids: vec![learned.memory.id],
            ..ForgetFilter::default()
        })
        .await
        .expect("forget");
    assert_eq!(gone.history, 1);
    assert_eq!(gone.working, 2, "the turn and the memory's own item");
    let history = m.history("ana", None, 10).await.expect("history");
    assert!(
        history.iter().all(|t| !t.text.starts_with("Remember that")),
        "{history:?}"
    );
    assert_eq!(history.len(), 2);

    // What cannot be remembered is said, and the turn is recorded anyway.
    let huge = format!("Remember that {}", "a very long note ".repeat(1200));
    let kept = m.observe(turn("user", &huge)).await.expect("observe");
    assert!(
        kept.learned.is_none() && kept.not_learned.is_some(),
        "too long to remember"
    );
    let history = m.history("ana", Some("s1"), 10).await.expect("history");
    assert_eq!(
        history.last().map(|t| t.text.as_str()),
        Some(huge.as_str()),
        "recorded anyway"
    );
}
