//! The memory manager: one API over the four tiers — remember, recall, forget, consolidate,
//! export and import.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::extract;
use crate::keywords;
use crate::tiers::{
    Knowledge, MemoryError, Result, ShortTerm, StreamRecord, Turn, VectorFilter, VectorItem,
    Vectors, Working, WorkingItem,
};
use crate::types::{
    ForgetFilter, Hit, Kind, Memory, NewMemory, RecallQuery, Remembered, Stats, now_us,
};

/// Turns texts into vectors.
#[async_trait]
pub trait Embedder: Send + Sync {
    /// The model, `provider:model`.
    fn model(&self) -> &str;
    /// One vector per text.
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>>;
}

/// Embeddings through the provider router (any provider's embedding model, the local MiniLM
/// included), booked in the cost ledger under `module`.
pub struct RouterEmbedder {
    router: Arc<lotus_providers::Router>,
    model: String,
    module: String,
}

impl RouterEmbedder {
    /// Embeds with `model` (a name or alias) through `router`, for `module`.
    pub fn new(
        router: Arc<lotus_providers::Router>,
        model: impl Into<String>,
        module: impl Into<String>,
    ) -> Self {
        Self {
            router,
            model: model.into(),
            module: module.into(),
        }
    }
}

#[async_trait]
impl Embedder for RouterEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let n = texts.len();
        let e = self
            .router
            .embed(&self.module, &self.model, texts)
            .await
            .map_err(|e| MemoryError::Embed(e.to_string()))?;
        if e.vectors.len() != n {
            return Err(MemoryError::Embed(format!(
                "{} returned {} vectors for {n} texts",
                self.model,
                e.vectors.len()
            )));
        }
        Ok(e.vectors)
    }
}

/// How the manager ranks and keeps.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    /// How long an interaction stays in working memory before it moves to the stream.
    #[serde(with = "humantime_serde")]
    pub working_ttl: Duration,
    /// How long the short-term stream keeps records.
    #[serde(with = "humantime_serde")]
    pub short_term_retention: Duration,
    /// Age at which recency counts half.
    #[serde(with = "humantime_serde")]
    pub recency_half_life: Duration,
    /// Vector matches less similar than this are not hits unless their words match too.
    pub min_similarity: f32,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            working_ttl: Duration::from_secs(15 * 60),
            short_term_retention: Duration::from_secs(48 * 3600),
            recency_half_life: Duration::from_secs(30 * 24 * 3600),
            min_similarity: 0.2,
        }
    }
}

/// What `forget` removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Forgotten {
    /// The memories removed (ids).
    pub ids: Vec<Uuid>,
    /// Records removed from the short-term stream.
    pub short_term: u64,
    /// Items removed from working memory.
    pub working: u64,
    /// Vectors removed.
    pub vectors: u64,
    /// Turns removed from the conversation history.
    pub history: u64,
}

/// A turn to record with [`MemoryManager::observe`].
#[derive(Clone, Debug, Default, Deserialize)]
pub struct NewTurn {
    /// Whose.
    pub user: String,
    /// The session.
    #[serde(default)]
    pub session: String,
    /// `user` (the default), `assistant`, `tool`.
    #[serde(default)]
    pub role: String,
    /// What was said.
    pub text: String,
    /// Anything to keep with it (models, tokens, cost).
    #[serde(default)]
    pub meta: serde_json::Value,
}

/// What [`MemoryManager::observe`] did.
#[derive(Clone, Debug, Serialize)]
pub struct Observed {
    /// The turn's id.
    pub turn: Uuid,
    /// The memory the turn became, when it asked to remember something or stated a fact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learned: Option<Remembered>,
    /// Why what the turn asked to keep could not be remembered (the turn is recorded anyway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_learned: Option<String>,
}

/// What `consolidate` moved.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Consolidated {
    /// Interactions moved from working memory to the stream.
    pub moved: u64,
    /// Facts found in them and remembered.
    pub facts: u64,
    /// Stream records past retention, removed.
    pub trimmed: u64,
}

/// The four tiers and the embedder.
pub struct Tiers {
    /// L1.
    pub working: Arc<dyn Working>,
    /// L2.
    pub short_term: Arc<dyn ShortTerm>,
    /// L3.
    pub vectors: Arc<dyn Vectors>,
    /// L4.
    pub knowledge: Arc<dyn Knowledge>,
}

/// Remembers, recalls, supersedes and forgets, across the tiers.
pub struct MemoryManager {
    tiers: Tiers,
    embedder: Arc<dyn Embedder>,
    config: ManagerConfig,
}

/// Longest text remembered.
pub const MAX_TEXT: usize = 16 * 1024;
/// Most hits one recall returns.
pub const MAX_K: usize = 100;
/// Rank constant of reciprocal rank fusion.
const RRF_K: f32 = 60.0;

fn check_user(user: &str) -> Result<()> {
    if user.trim().is_empty() || user.len() > 128 {
        return Err(MemoryError::BadInput(
            "a user is required (1 to 128 characters)".into(),
        ));
    }
    Ok(())
}

fn vector_filter(user: &str) -> VectorFilter {
    BTreeMap::from([("user".to_owned(), Value::String(user.to_owned()))])
}

/// A memory's vector with the metadata recall filters on.
fn vector_item(m: &Memory, vector: Vec<f32>) -> VectorItem {
    let mut meta = vector_filter(&m.user);
    meta.insert("kind".to_owned(), Value::String(m.kind.to_string()));
    VectorItem {
        id: m.id,
        vector,
        meta,
    }
}

/// Whether `m` may be a hit of `q`: the asker's, of the kinds asked, current unless superseded
/// facts were asked for, with the metadata asked for.
fn admits(q: &RecallQuery, kinds: &[Kind], m: &Memory) -> bool {
    m.user == q.user
        && kinds.contains(&m.kind)
        && (q.include_superseded || m.is_current())
        && q.metadata.iter().all(|(k, v)| m.metadata.get(k) == Some(v))
}

impl MemoryManager {
    /// A manager over `tiers`, embedding with `embedder`.
    pub fn new(tiers: Tiers, embedder: Arc<dyn Embedder>, config: ManagerConfig) -> Self {
        Self {
            tiers,
            embedder,
            config,
        }
    }

    /// The tiers.
    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    async fn embed_one(&self, text: &str) -> Result<Vec<f32>> {
        self.embedder
            .embed(vec![text.to_owned()])
            .await?
            .pop()
            .ok_or_else(|| MemoryError::Embed("no vector returned".into()))
    }

    /// Remembers `new`. An identical current memory is not stored twice; a fact about the same
    /// subject and attribute as a current one supersedes it.
    pub async fn remember(&self, new: NewMemory) -> Result<Remembered> {
        check_user(&new.user)?;
        let text = new.text.trim().to_owned();
        if text.is_empty() {
            return Err(MemoryError::BadInput(
                "nothing to remember: the text is empty".into(),
            ));
        }
        if text.len() > MAX_TEXT {
            return Err(MemoryError::BadInput(format!(
                "the text is {} bytes; memories hold at most {MAX_TEXT}",
                text.len()
            )));
        }
        let importance = new.importance.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&importance) {
            return Err(MemoryError::BadInput(format!(
                "importance {importance} is outside 0..1"
            )));
        }
        let k = &self.tiers.knowledge;
        if let Some(existing) = k.find_current_text(&new.user, &text).await? {
            return Ok(Remembered {
                memory: existing,
                duplicate: true,
                superseded: Vec::new(),
            });
        }
        let found = if matches!(new.kind, Kind::Fact | Kind::Preference) {
            extract::fact(&text)
        } else {
            None
        };
        let subject = new
            .subject
            .as_deref()
            .map(extract::normalize)
            .or_else(|| found.as_ref().map(|f| f.subject.clone()));
        let attribute = new
            .attribute
            .as_deref()
            .map(extract::normalize)
            .or_else(|| found.as_ref().map(|f| f.attribute.clone()));
        let value = found.map(|f| f.value);
        let previous = match (&subject, &attribute) {
            (Some(s), Some(a)) => k.current_fact(&new.user, s, a).await?,
            _ => None,
        };
        if let (Some(p), Some(v)) = (&previous, &value)
            && p.value
                .as_deref()
                .is_some_and(|pv| pv.eq_ignore_ascii_case(v))
        {
            return Ok(Remembered {
                memory: p.clone(),
                duplicate: true,
                superseded: Vec::new(),
            });
        }

        // Embed first: if that fails, nothing is stored.
        let vector = self.embed_one(&text).await?;
        let now = now_us();
        let memory = Memory {
            id: Uuid::now_v7(),
            user: new.user.clone(),
            kind: new.kind,
            text: text.clone(),
            subject,
            attribute,
            value,
            importance,
            created_us: now,
            valid_from_us: now,
            valid_to_us: None,
            superseded_by: None,
            source: new.source.unwrap_or_else(|| "api".into()),
            metadata: new.metadata,
        };
        k.insert(&memory).await?;
        let item = vector_item(&memory, vector);
        if let Err(e) = self
            .tiers
            .vectors
            .upsert(memory.kind.collection(), &[item])
            .await
        {
            // Keep the tiers in step: without its vector the memory is not stored at all.
            let _ = k.delete(&[memory.id]).await;
            return Err(e);
        }
        let mut superseded = Vec::new();
        if let Some(mut p) = previous {
            k.supersede(&p.id, &memory.id, now).await?;
            p.valid_to_us = Some(now);
            p.superseded_by = Some(memory.id);
            superseded.push(p);
        }
        self.tiers
            .short_term
            .append(&StreamRecord {
                id: Uuid::now_v7(),
                user: memory.user.clone(),
                memory_id: Some(memory.id),
                op: if superseded.is_empty() {
                    "remember".into()
                } else {
                    "supersede".into()
                },
                text: text.clone(),
                at_us: now,
            })
            .await?;
        self.tiers
            .working
            .push(
                &memory.user,
                &WorkingItem {
                    id: Uuid::now_v7(),
                    memory_id: Some(memory.id),
                    role: "memory".into(),
                    text,
                    at_us: now,
                },
            )
            .await?;
        Ok(Remembered {
            memory,
            duplicate: false,
            superseded,
        })
    }

    /// The memories of `q.user` that best answer `q.query`: keyword and vector matches fused by
    /// reciprocal rank, weighted by importance and recency. Superseded facts are not hits
    /// (unless asked for); a current fact carries its earlier values as history.
    pub async fn recall(&self, q: &RecallQuery) -> Result<Vec<Hit>> {
        check_user(&q.user)?;
        if q.query.trim().is_empty() {
            return Err(MemoryError::BadInput(
                "nothing to recall: the query is empty".into(),
            ));
        }
        if q.k == 0 || q.k > MAX_K {
            return Err(MemoryError::BadInput(format!(
                "k must be 1 to {MAX_K}, not {}",
                q.k
            )));
        }
        let fetch = (q.k * 4).max(20);
        let kinds: Vec<Kind> = if q.kinds.is_empty() {
            Kind::ALL.to_vec()
        } else {
            q.kinds.clone()
        };
        // The keyword search runs on another worker while the query is embedded and the
        // vector index searched.
        let keyword = {
            let knowledge = self.tiers.knowledge.clone();
            let (user, query, superseded) = (q.user.clone(), q.query.clone(), q.include_superseded);
            tokio::spawn(async move { knowledge.keyword(&user, &query, fetch, superseded).await })
        };
        let vector = self.embed_one(&q.query).await?;
        let filter = vector_filter(&q.user);
        let mut by_vector: Vec<(Uuid, f32)> = Vec::new();
        for kind in &kinds {
            by_vector.extend(
                self.tiers
                    .vectors
                    .query(kind.collection(), &vector, fetch, &filter)
                    .await?,
            );
        }
        by_vector.sort_by(|a, b| b.1.total_cmp(&a.1));
        by_vector.truncate(fetch);
        let by_keyword = keyword
            .await
            .map_err(|e| MemoryError::backend("knowledge", "keyword search", e))??;

        #[derive(Default)]
        struct Cand {
            rrf: f32,
            kw: Option<usize>,
            vec: Option<usize>,
            sim: Option<f32>,
        }
        let mut cands: HashMap<Uuid, Cand> = HashMap::new();
        for (rank, (id, sim)) in by_vector.iter().enumerate() {
            let c = cands.entry(*id).or_default();
            c.rrf += 1.0 / (RRF_K + rank as f32 + 1.0);
            c.vec = Some(rank + 1);
            c.sim = Some(*sim);
        }
        for (rank, (id, _)) in by_keyword.iter().enumerate() {
            let c = cands.entry(*id).or_default();
            c.rrf += 1.0 / (RRF_K + rank as f32 + 1.0);
            c.kw = Some(rank + 1);
        }
        let ids: Vec<Uuid> = cands.keys().copied().collect();
        let memories = self.tiers.knowledge.get_many(&ids).await?;
        let now = now_us();
        let half_life = self.config.recency_half_life.as_micros().max(1) as f64;
        let mut hits: Vec<Hit> = memories
            .into_iter()
            .filter(|m| admits(q, &kinds, m))
            .filter_map(|m| {
                let c = cands.get(&m.id)?;
                if c.kw.is_none() && c.sim.is_some_and(|s| s < self.config.min_similarity) {
                    return None;
                }
                let age = (now - m.valid_from_us).max(0) as f64;
                let recency = 0.5f64.powf(age / half_life) as f32;
                let mut score = c.rrf * (0.75 + 0.5 * m.importance) * (0.85 + 0.15 * recency);
                if !m.is_current() {
                    score *= 0.5;
                }
                Some(Hit {
                    score,
                    keyword_rank: c.kw,
                    vector_rank: c.vec,
                    similarity: c.sim,
                    history: Vec::new(),
                    via: None,
                    memory: m,
                })
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        self.second_hop(q, &kinds, &mut hits).await?;
        hits.truncate(q.k);
        for h in &mut hits {
            if let (Some(s), Some(a)) = (&h.memory.subject, &h.memory.attribute) {
                h.history = self
                    .tiers
                    .knowledge
                    .fact_history(&q.user, s, a)
                    .await?
                    .into_iter()
                    .filter(|m| m.id != h.memory.id && !m.is_current())
                    .collect();
            }
        }
        Ok(hits)
    }

    /// Places right after the first hit the memory that best shares its own words (those not
    /// in the query), marked `via` it: "where does my sister live?" finds "my sister is called
    /// Dana", and through "Dana", "Dana lives in Kyoto", which shares no word with the question
    /// but "live". A memory found already lower down moves up, keeping its ranks; only one not
    /// among the hits is read from the store.
    async fn second_hop(&self, q: &RecallQuery, kinds: &[Kind], hits: &mut Vec<Hit>) -> Result<()> {
        let Some(first) = hits.first() else {
            return Ok(());
        };
        let asked = keywords::words(&q.query);
        let own: Vec<String> = keywords::words(&first.memory.text)
            .into_iter()
            .filter(|w| !asked.contains(w))
            .collect();
        if own.is_empty() {
            return Ok(());
        }
        let first_id = first.memory.id;
        let found = self
            .tiers
            .knowledge
            .keyword(&q.user, &own.join(" "), 4, q.include_superseded)
            .await?;
        let Some(best) = found
            .into_iter()
            .map(|(id, _)| id)
            .find(|id| *id != first_id)
        else {
            return Ok(());
        };
        let linked = match hits.iter().position(|h| h.memory.id == best) {
            Some(1) => return Ok(()),
            Some(i) => hits.remove(i),
            None => {
                let memories = self.tiers.knowledge.get_many(&[best]).await?;
                let Some(m) = memories
                    .into_iter()
                    .find(|m| m.id == best && admits(q, kinds, m))
                else {
                    return Ok(());
                };
                Hit {
                    score: hits[0].score * 0.9,
                    keyword_rank: None,
                    vector_rank: None,
                    similarity: None,
                    history: Vec::new(),
                    via: None,
                    memory: m,
                }
            }
        };
        hits.insert(
            1,
            Hit {
                via: Some(first_id),
                ..linked
            },
        );
        Ok(())
    }

    /// Forgets what `f` selects, in every tier: the memories, their vectors, their records in
    /// the stream and working memory. Forgetting a fact forgets its earlier values too.
    pub async fn forget(&self, f: &ForgetFilter) -> Result<Forgotten> {
        check_user(&f.user)?;
        let narrowed =
            !f.ids.is_empty() || f.kind.is_some() || f.subject.is_some() || f.attribute.is_some();
        if !narrowed && !f.all {
            return Err(MemoryError::BadInput(
                "say what to forget: ids, a kind, a subject or attribute, or everything of the user"
                    .into(),
            ));
        }
        let k = &self.tiers.knowledge;
        let selected = if f.all {
            k.list(Some(&f.user)).await?
        } else {
            let subject = f.subject.as_deref().map(extract::normalize);
            let attribute = f.attribute.as_deref().map(extract::normalize);
            k.select(&ForgetFilter {
                subject,
                attribute,
                ..f.clone()
            })
            .await?
        };
        let mut chosen: BTreeMap<Uuid, Memory> = selected.into_iter().map(|m| (m.id, m)).collect();
        let facts: Vec<(String, String)> = chosen
            .values()
            .filter_map(|m| Some((m.subject.clone()?, m.attribute.clone()?)))
            .collect();
        for (s, a) in facts {
            for m in k.fact_history(&f.user, &s, &a).await? {
                chosen.insert(m.id, m);
            }
        }
        let mut out = Forgotten {
            ids: chosen.keys().copied().collect(),
            ..Forgotten::default()
        };
        let mut by_collection: BTreeMap<&str, Vec<Uuid>> = BTreeMap::new();
        for m in chosen.values() {
            by_collection
                .entry(m.kind.collection())
                .or_default()
                .push(m.id);
        }
        for (collection, ids) in by_collection {
            out.vectors += self.tiers.vectors.delete(collection, &ids).await?;
        }
        out.short_term = self.tiers.short_term.forget(&f.user, &out.ids).await?;
        out.working = self.tiers.working.forget(&f.user, &out.ids).await?;
        out.history = k.history_forget(&f.user, &out.ids).await?;
        if f.all {
            for kind in Kind::ALL {
                out.vectors += self
                    .tiers
                    .vectors
                    .delete_where(kind.collection(), &vector_filter(&f.user))
                    .await?;
            }
            out.short_term += self.tiers.short_term.clear_user(&f.user).await?;
            out.working += self.tiers.working.clear_user(&f.user).await?;
            k.profile_clear(&f.user).await?;
            out.history += k.history_clear(&f.user).await?;
        }
        // The source of truth goes last: an interrupted forget is found and finished by a retry.
        k.delete(&out.ids).await?;
        Ok(out)
    }

    /// Records a turn of a conversation: in working memory (recent turns) and in the
    /// conversation history (L4). A user's turn that asks to remember something ("remember
    /// that …") or states a fact ("my favourite editor is Helix") is remembered at once.
    pub async fn observe(&self, t: NewTurn) -> Result<Observed> {
        check_user(&t.user)?;
        if t.text.trim().is_empty() {
            return Err(MemoryError::BadInput(
                "nothing to observe: the turn's text is empty".into(),
            ));
        }
        let role = if t.role.is_empty() { "user" } else { &t.role };
        // What cannot be remembered (too long, say) is reported; the turn is recorded anyway.
        let (learned, not_learned) =
            match extract::worth_keeping(&t.text).filter(|_| role == "user") {
                Some(text) => match self
                    .remember(NewMemory {
                        user: t.user.clone(),
                        text,
                        source: Some("conversation".into()),
                        metadata: BTreeMap::from([(
                            "session".to_owned(),
                            serde_json::Value::String(t.session.clone()),
                        )]),
                        ..NewMemory::default()
                    })
                    .await
                {
                    Ok(r) => (Some(r), None),
                    Err(e) => (None, Some(e.to_string())),
                },
                None => (None, None),
            };
        let memory_id = learned.as_ref().map(|r| r.memory.id);
        let turn = Turn {
            id: Uuid::now_v7(),
            user: t.user,
            session: t.session,
            role: role.to_owned(),
            text: t.text,
            at_us: now_us(),
            memory_id,
            meta: t.meta,
        };
        self.tiers
            .working
            .push(
                &turn.user,
                &WorkingItem {
                    id: turn.id,
                    memory_id,
                    role: turn.role.clone(),
                    text: turn.text.clone(),
                    at_us: turn.at_us,
                },
            )
            .await?;
        self.tiers.knowledge.history_append(&turn).await?;
        Ok(Observed {
            turn: turn.id,
            learned,
            not_learned,
        })
    }

    /// `user`'s profile: what is known of them as keys and values (name, timezone, …).
    pub async fn profile(&self, user: &str) -> Result<BTreeMap<String, Value>> {
        check_user(user)?;
        self.tiers.knowledge.profile(user).await
    }

    /// Sets one key of `user`'s profile; `null` removes it.
    pub async fn profile_set(&self, user: &str, key: &str, value: &Value) -> Result<()> {
        check_user(user)?;
        let key = key.trim();
        if key.is_empty() || key.chars().count() > 64 || key.chars().any(char::is_control) {
            return Err(MemoryError::BadInput(format!(
                "`{key}` is not a profile key: use a short name of 1 to 64 characters, e.g. `name` or `timezone`"
            )));
        }
        if value.is_null() {
            return self
                .tiers
                .knowledge
                .profile_remove(user, key)
                .await
                .map(drop);
        }
        let size = value.to_string().len();
        if size > 4096 {
            return Err(MemoryError::BadInput(format!(
                "the value of `{key}` is too long ({size} bytes; at most 4096)"
            )));
        }
        self.tiers.knowledge.profile_set(user, key, value).await
    }

    /// The newest `limit` turns of `user` (of one session when given), oldest first.
    pub async fn history(
        &self,
        user: &str,
        session: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Turn>> {
        check_user(user)?;
        self.tiers.knowledge.history(user, session, limit).await
    }

    /// The newest `n` turns in working memory, newest first.
    pub async fn recent(&self, user: &str, n: usize) -> Result<Vec<WorkingItem>> {
        check_user(user)?;
        self.tiers.working.recent(user, n).await
    }

    /// Moves interactions older than the working TTL to the stream (remembering the facts the
    /// user stated in them) and trims the stream to its retention.
    pub async fn consolidate(&self) -> Result<Consolidated> {
        let now = now_us();
        let ttl = i64::try_from(self.config.working_ttl.as_micros()).unwrap_or(i64::MAX);
        let retention =
            i64::try_from(self.config.short_term_retention.as_micros()).unwrap_or(i64::MAX);
        let mut out = Consolidated::default();
        for (user, item) in self.tiers.working.take_older(now - ttl).await? {
            self.tiers
                .short_term
                .append(&StreamRecord {
                    id: item.id,
                    user: user.clone(),
                    memory_id: item.memory_id,
                    op: "interaction".into(),
                    text: item.text.clone(),
                    at_us: item.at_us,
                })
                .await?;
            out.moved += 1;
            if item.role == "user"
                && item.memory_id.is_none()
                && extract::fact(&item.text).is_some()
            {
                let r = self
                    .remember(NewMemory {
                        user,
                        text: item.text,
                        source: Some("consolidation".into()),
                        ..NewMemory::default()
                    })
                    .await?;
                out.facts += u64::from(!r.duplicate);
            }
        }
        out.trimmed = self.tiers.short_term.trim(now - retention).await?;
        self.tiers.vectors.flush().await?;
        Ok(out)
    }

    /// Every memory (of `user`, or of everyone), oldest first, for export.
    pub async fn export(&self, user: Option<&str>) -> Result<Vec<Memory>> {
        self.tiers.knowledge.list(user).await
    }

    /// Stores exported memories as they were (ids, validity, history), embedding them again.
    /// Memories already present are skipped; returns how many were added.
    pub async fn import(&self, memories: Vec<Memory>) -> Result<u64> {
        let mut added = 0;
        for chunk in memories.chunks(64) {
            let present = self.present(chunk.iter()).await?;
            let fresh: Vec<&Memory> = chunk.iter().filter(|m| !present.contains(&m.id)).collect();
            let vectors = self.embed_all(&fresh).await?;
            added += self
                .store_all(fresh.into_iter().zip(vectors).collect())
                .await?;
        }
        self.tiers.vectors.flush().await?;
        Ok(added)
    }

    /// Stores memories with their vectors as given (a backup that carries them, a benchmark's
    /// generated data), in large batches. Memories already present are skipped; returns how
    /// many were added.
    pub async fn import_with_vectors(&self, items: Vec<(Memory, Vec<f32>)>) -> Result<u64> {
        let mut added = 0;
        let mut items = items.into_iter();
        loop {
            let chunk: Vec<(Memory, Vec<f32>)> = items.by_ref().take(4096).collect();
            if chunk.is_empty() {
                break;
            }
            let (memories, vectors): (Vec<Memory>, Vec<Vec<f32>>) = chunk.into_iter().unzip();
            let present = self.present(memories.iter()).await?;
            let fresh: Vec<(&Memory, Vec<f32>)> = memories
                .iter()
                .zip(vectors)
                .filter(|(m, _)| !present.contains(&m.id))
                .collect();
            added += self.store_all(fresh).await?;
        }
        self.tiers.vectors.flush().await?;
        Ok(added)
    }

    /// The ids of `memories` already stored (the memories are checked for bad input first).
    async fn present<'a>(
        &self,
        memories: impl Iterator<Item = &'a Memory>,
    ) -> Result<std::collections::HashSet<Uuid>> {
        let mut ids = Vec::new();
        for m in memories {
            check_user(&m.user)?;
            if m.text.trim().is_empty() || m.text.len() > MAX_TEXT {
                return Err(MemoryError::BadInput(format!(
                    "memory {}: the text is empty or longer than {MAX_TEXT} bytes",
                    m.id
                )));
            }
            ids.push(m.id);
        }
        Ok(self
            .tiers
            .knowledge
            .get_many(&ids)
            .await?
            .into_iter()
            .map(|m| m.id)
            .collect())
    }

    /// Stores memories in L4 and their vectors in L3; how many.
    async fn store_all(&self, memories: Vec<(&Memory, Vec<f32>)>) -> Result<u64> {
        for (m, _) in &memories {
            self.tiers.knowledge.insert(m).await?;
        }
        let n = memories.len() as u64;
        self.store_vectors(memories).await?;
        Ok(n)
    }

    /// Rebuilds every vector collection from the stored memories: after a change of embedding
    /// model, or over an index an earlier version wrote. Returns how many were embedded.
    pub async fn reindex(&self) -> Result<u64> {
        for kind in Kind::ALL {
            self.tiers.vectors.reset(kind.collection()).await?;
        }
        let all = self.tiers.knowledge.list(None).await?;
        for chunk in all.chunks(64) {
            let chunk: Vec<&Memory> = chunk.iter().collect();
            let vectors = self.embed_all(&chunk).await?;
            self.store_vectors(chunk.into_iter().zip(vectors).collect())
                .await?;
        }
        self.tiers.vectors.flush().await?;
        Ok(all.len() as u64)
    }

    async fn embed_all(&self, memories: &[&Memory]) -> Result<Vec<Vec<f32>>> {
        let vectors = self
            .embedder
            .embed(memories.iter().map(|m| m.text.clone()).collect())
            .await?;
        if vectors.len() != memories.len() {
            return Err(MemoryError::Embed(format!(
                "asked for {} vectors, got {}",
                memories.len(),
                vectors.len()
            )));
        }
        Ok(vectors)
    }

    /// Stores the vectors of memories, one batch per collection.
    async fn store_vectors(&self, memories: Vec<(&Memory, Vec<f32>)>) -> Result<()> {
        let mut by_collection: BTreeMap<&'static str, Vec<VectorItem>> = BTreeMap::new();
        for (m, v) in memories {
            by_collection
                .entry(m.kind.collection())
                .or_default()
                .push(vector_item(m, v));
        }
        for (collection, items) in by_collection {
            self.tiers.vectors.upsert(collection, &items).await?;
        }
        Ok(())
    }

    /// Counts per tier.
    pub async fn stats(&self) -> Result<Stats> {
        let (memories, superseded, users) = self.tiers.knowledge.counts().await?;
        let mut vectors = BTreeMap::new();
        for kind in Kind::ALL {
            vectors.insert(
                kind.collection().to_owned(),
                self.tiers.vectors.count(kind.collection()).await?,
            );
        }
        Ok(Stats {
            memories,
            superseded,
            users,
            vectors,
            short_term: self.tiers.short_term.count().await?,
            working: self.tiers.working.count().await?,
            backends: BTreeMap::from([
                ("working".into(), self.tiers.working.backend().into()),
                ("short_term".into(), self.tiers.short_term.backend().into()),
                ("vectors".into(), self.tiers.vectors.backend().into()),
                ("knowledge".into(), self.tiers.knowledge.backend().into()),
                ("embedder".into(), self.embedder.model().into()),
            ]),
        })
    }

    /// Flushes what the tiers buffer.
    pub async fn flush(&self) -> Result<()> {
        self.tiers.vectors.flush().await
    }
}
