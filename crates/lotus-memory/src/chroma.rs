//! L3 on a ChromaDB server (HTTP API v2, verified against chromadb 1.5.9; see
//! `docs/dev/chromadb-http-api.md`).
//!
//! Each collection of the tier is a Chroma collection named `PREFIX + name` (prefix `lotus_` by
//! default) in tenant `default_tenant`, database `default_database`, created on first write
//! with the cosine space. Record ids are the memories' UUIDs; metadata is stored as given
//! (strings, numbers, booleans; `null` values are left out). Similarity is `1 − distance`.
//!
//! Chroma merges metadata on upsert (keys not sent are kept), so an upsert of an existing record
//! first reads its metadata and clears the keys the new item no longer has: the record ends up
//! with exactly the new metadata, as in the embedded tier. Chroma's `deleted` count for a delete
//! by ids counts the ids asked for, not the records removed, so deletes look the records up first.
//! A batch larger than [`BATCH`] is written in several requests, each atomic on its own.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::tiers::{MemoryError, Result, VectorFilter, VectorItem, Vectors};

/// Records sent or read per request.
pub const BATCH: usize = 1000;

/// The collection-name prefix used unless [`ChromaVectors::with_prefix`] says otherwise.
pub const DEFAULT_PREFIX: &str = "lotus_";

const TENANT: &str = "default_tenant";
const DATABASE: &str = "default_database";

fn err(e: impl std::fmt::Display) -> MemoryError {
    MemoryError::backend("vectors", "chromadb", e)
}

/// A collection as cached: its id, and its dimensions once known.
#[derive(Clone, Debug)]
struct Col {
    id: String,
    dims: Option<usize>,
}

/// The answer to a request: its status and body.
struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct CollectionInfo {
    id: String,
    #[serde(default)]
    dimension: Option<u64>,
    #[serde(default)]
    configuration_json: Option<Value>,
}

#[derive(Deserialize)]
struct GetReply {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    metadatas: Option<Vec<Option<Map<String, Value>>>>,
}

#[derive(Deserialize)]
struct QueryReply {
    #[serde(default)]
    ids: Vec<Vec<String>>,
    #[serde(default)]
    distances: Option<Vec<Vec<Option<f32>>>>,
}

impl Reply {
    /// Whether Chroma said the collection does not exist (a `NotFoundError`, not an unknown
    /// route, whose body is empty).
    fn collection_missing(&self) -> bool {
        self.status == StatusCode::NOT_FOUND
            && serde_json::from_slice::<ErrorBody>(&self.body)
                .is_ok_and(|b| b.error.as_deref() == Some("NotFoundError"))
    }

    /// The error this failed reply stands for: `BadInput` for a dimension mismatch, a backend
    /// error (with the status and Chroma's message) otherwise.
    fn error(&self, op: &str) -> MemoryError {
        let parsed = serde_json::from_slice::<ErrorBody>(&self.body).ok();
        let message = parsed
            .as_ref()
            .and_then(|b| b.message.clone())
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&self.body);
                if text.trim().is_empty() {
                    "(empty body)".to_owned()
                } else {
                    text.chars().take(500).collect()
                }
            });
        if self.status == StatusCode::BAD_REQUEST && message.contains("dimension") {
            return MemoryError::BadInput(format!("ChromaDB: {message}"));
        }
        let kind = parsed
            .and_then(|b| b.error)
            .map(|e| format!("{e}: "))
            .unwrap_or_default();
        err(format!("{op}: HTTP {}: {kind}{message}", self.status))
    }

    /// The body of a successful reply as `T`; the error of a failed one.
    fn decode<T: DeserializeOwned>(&self, op: &str) -> Result<T> {
        if !self.status.is_success() {
            return Err(self.error(op));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| err(format!("{op}: unexpected answer from ChromaDB: {e}")))
    }
}

/// The long-term vector tier on a ChromaDB server.
pub struct ChromaVectors {
    http: reqwest::Client,
    url: String,
    /// `URL/api/v2/tenants/T/databases/D`.
    base: String,
    prefix: String,
    /// Full collection name → collection.
    collections: Mutex<HashMap<String, Col>>,
}

impl std::fmt::Debug for ChromaVectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChromaVectors")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ChromaVectors {
    /// Connects to the ChromaDB server at `url` (such as `http://127.0.0.1:8000`), checking
    /// that it answers its heartbeat.
    pub async fn connect(url: &str) -> Result<Self> {
        let root = url.trim().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(err)?;
        let unreachable = |why: String| {
            err(format!(
                "ChromaDB at {url} does not answer: {why}; start it with \
                 `chroma run --host 127.0.0.1 --port 8000 --path <data dir>` or fix [memory] vectors"
            ))
        };
        let beat = http
            .get(format!("{root}/api/v2/heartbeat"))
            .send()
            .await
            .map_err(|e| unreachable(lotus_core::error_chain(&e)))?;
        if !beat.status().is_success() {
            return Err(unreachable(format!(
                "GET /api/v2/heartbeat gave HTTP {}",
                beat.status()
            )));
        }
        Ok(Self {
            http,
            base: format!("{root}/api/v2/tenants/{TENANT}/databases/{DATABASE}"),
            url: root,
            prefix: DEFAULT_PREFIX.to_owned(),
            collections: Mutex::new(HashMap::new()),
        })
    }

    /// Names collections `prefix + name` instead of `lotus_ + name` (to keep apart the data of
    /// several installations, or of test runs, on one server).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self.collections.get_mut().clear();
        self
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The Chroma name of `collection`, if it is a valid name.
    fn full_name(&self, collection: &str) -> Result<String> {
        crate::tiers::check_collection(collection)?;
        let name = format!("{}{collection}", self.prefix);
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let alnum_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !(3..=512).contains(&name.len()) || !name.chars().all(ok_char) || !alnum_ends {
            return Err(MemoryError::BadInput(format!(
                "`{name}` is not a ChromaDB collection name: 3 to 512 of [a-zA-Z0-9._-], \
                 starting and ending with a letter or digit"
            )));
        }
        Ok(name)
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Reply> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| err(format!("{method} {path}: {}", lotus_core::error_chain(&e))))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| err(format!("{method} {path}: {}", lotus_core::error_chain(&e))))?
            .to_vec();
        Ok(Reply { status, body })
    }

    fn cached(&self, name: &str) -> Option<Col> {
        self.collections.lock().get(name).cloned()
    }

    fn forget(&self, name: &str) {
        self.collections.lock().remove(name);
    }

    /// Caches what Chroma said of a collection, checking it measures cosine distance.
    fn remember(&self, name: &str, info: CollectionInfo) -> Result<Col> {
        let space = info
            .configuration_json
            .as_ref()
            .and_then(|c| c.pointer("/hnsw/space"))
            .and_then(Value::as_str);
        if let Some(space) = space
            && space != "cosine"
        {
            return Err(err(format!(
                "collection `{name}` measures `{space}` distance, not `cosine`; \
                 delete it or use another prefix"
            )));
        }
        let col = Col {
            id: info.id,
            dims: info.dimension.and_then(|d| usize::try_from(d).ok()),
        };
        self.collections.lock().insert(name.to_owned(), col.clone());
        Ok(col)
    }

    /// The collection, if it exists.
    async fn existing(&self, name: &str) -> Result<Option<Col>> {
        if let Some(c) = self.cached(name) {
            return Ok(Some(c));
        }
        let r = self
            .send(Method::GET, &format!("/collections/{name}"), None)
            .await?;
        if r.collection_missing() {
            return Ok(None);
        }
        let info: CollectionInfo = r.decode("get collection")?;
        self.remember(name, info).map(Some)
    }

    /// The collection, created (cosine space) if missing.
    async fn created(&self, name: &str) -> Result<Col> {
        if let Some(c) = self.cached(name) {
            return Ok(c);
        }
        let body = json!({
            "name": name,
            "get_or_create": true,
            "configuration": {"hnsw": {"space": "cosine"}},
        });
        let info: CollectionInfo = self
            .send(Method::POST, "/collections", Some(&body))
            .await?
            .decode("create collection")?;
        self.remember(name, info)
    }

    fn set_dims(&self, name: &str, id: &str, dims: usize) {
        if let Some(c) = self.collections.lock().get_mut(name)
            && c.id == id
        {
            c.dims = Some(dims);
        }
    }

    /// The ids among `ids` that the collection holds, or `None` if it is gone.
    async fn present(&self, col: &Col, ids: &[String]) -> Result<Option<Vec<String>>> {
        let body = json!({"ids": ids, "include": []});
        let Some(got) = self
            .on_collection::<GetReply>(col, Method::POST, "get", Some(&body))
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(got.ids))
    }

    /// Sends `body` to the collection's endpoint `op` and decodes the answer; `None` when the
    /// collection is gone.
    async fn on_collection<T: serde::de::DeserializeOwned>(
        &self,
        col: &Col,
        method: Method,
        op: &str,
        body: Option<&Value>,
    ) -> Result<Option<T>> {
        let r = self
            .send(method, &format!("/collections/{}/{op}", col.id), body)
            .await?;
        if r.collection_missing() {
            return Ok(None);
        }
        r.decode(op).map(Some)
    }

    /// Deletes records known to exist; `false` if the collection is gone.
    async fn delete_ids(&self, col: &Col, ids: &[String]) -> Result<bool> {
        let body = json!({ "ids": ids });
        let Some(_) = self
            .on_collection::<Value>(col, Method::POST, "delete", Some(&body))
            .await?
        else {
            return Ok(false);
        };
        Ok(true)
    }

    /// Writes one batch; `false` if the collection is gone.
    async fn upsert_batch(&self, col: &Col, items: &[&VectorItem]) -> Result<bool> {
        let ids: Vec<String> = items.iter().map(|i| i.id.to_string()).collect();
        // The metadata keys each existing record has, to clear those the new item lacks.
        let body = json!({"ids": ids, "include": ["metadatas"]});
        let Some(got) = self
            .on_collection::<GetReply>(col, Method::POST, "get", Some(&body))
            .await?
        else {
            return Ok(false);
        };
        let mut old: HashMap<String, Vec<String>> = HashMap::new();
        let metas = got.metadatas.unwrap_or_default();
        for (id, meta) in got.ids.into_iter().zip(metas) {
            old.insert(
                id,
                meta.map(|m| m.into_iter().map(|(k, _)| k).collect())
                    .unwrap_or_default(),
            );
        }
        let metadatas: Vec<Value> = items
            .iter()
            .zip(&ids)
            .map(|(item, id)| {
                let mut m: Map<String, Value> = item
                    .meta
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for k in old.get(id).into_iter().flatten() {
                    if !m.contains_key(k) {
                        m.insert(k.clone(), Value::Null);
                    }
                }
                if m.is_empty() {
                    Value::Null
                } else {
                    Value::Object(m)
                }
            })
            .collect();
        let embeddings: Vec<&[f32]> = items.iter().map(|i| i.vector.as_slice()).collect();
        let body = json!({"ids": ids, "embeddings": embeddings, "metadatas": metadatas});
        let Some(_) = self
            .on_collection::<Value>(col, Method::POST, "upsert", Some(&body))
            .await?
        else {
            return Ok(false);
        };
        Ok(true)
    }
}

/// A metadata key Chroma would take for an operator or reject.
fn reserved_key(k: &str) -> bool {
    k.starts_with('$') || k.starts_with('#')
}

/// The `where` clause of an equality filter: `None` for no filter, `Some(None)` for a filter
/// nothing can match (a value that is never stored: `null`, an array, an object; or a key
/// that is never stored).
fn where_clause(filter: &VectorFilter) -> Option<Option<Value>> {
    let mut terms = Vec::with_capacity(filter.len());
    for (k, v) in filter {
        if reserved_key(k) || !(v.is_string() || v.is_number() || v.is_boolean()) {
            return Some(None);
        }
        let mut m = Map::new();
        m.insert(k.clone(), v.clone());
        terms.push(Value::Object(m));
    }
    match terms.len() {
        0 => None,
        1 => terms.pop().map(Some),
        _ => Some(Some(json!({ "$and": terms }))),
    }
}

fn check_meta(item: &VectorItem) -> Result<()> {
    for (k, v) in &item.meta {
        if k.is_empty() || reserved_key(k) {
            return Err(MemoryError::BadInput(format!(
                "metadata key `{k}` of {}: ChromaDB reserves empty keys and keys starting with `$` or `#`",
                item.id
            )));
        }
        if !(v.is_null() || v.is_string() || v.is_number() || v.is_boolean()) {
            return Err(MemoryError::BadInput(format!(
                "metadata `{k}` of {}: only strings, numbers and booleans can be stored",
                item.id
            )));
        }
    }
    Ok(())
}

/// The items, the last of each id only, in order.
fn last_of_each(items: &[VectorItem]) -> Vec<&VectorItem> {
    let last: HashMap<Uuid, usize> = items.iter().enumerate().map(|(i, it)| (it.id, i)).collect();
    items
        .iter()
        .enumerate()
        .filter(|(i, it)| last.get(&it.id) == Some(i))
        .map(|(_, it)| it)
        .collect()
}

#[async_trait]
impl Vectors for ChromaVectors {
    fn backend(&self) -> &'static str {
        "chromadb"
    }

    async fn upsert(&self, collection: &str, items: &[VectorItem]) -> Result<()> {
        let name = self.full_name(collection)?;
        let Some(first) = items.first() else {
            return Ok(());
        };
        let dims = self
            .cached(&name)
            .and_then(|c| c.dims)
            .unwrap_or(first.vector.len());
        crate::tiers::check_vectors(collection, dims, items)?;
        for it in items {
            check_meta(it)?;
        }
        let items = last_of_each(items);
        for chunk in items.chunks(BATCH) {
            let mut written = false;
            // A cached collection may have been deleted behind our back: create it once more.
            for _ in 0..2 {
                let col = self.created(&name).await?;
                if let Some(d) = col.dims
                    && d != dims
                {
                    return Err(MemoryError::BadInput(format!(
                        "collection `{collection}` holds vectors of dimension {d}; \
                         these have dimension {dims}"
                    )));
                }
                if self.upsert_batch(&col, chunk).await? {
                    self.set_dims(&name, &col.id, dims);
                    written = true;
                    break;
                }
                self.forget(&name);
            }
            if !written {
                return Err(err(format!(
                    "collection `{name}` disappeared while being written"
                )));
            }
        }
        Ok(())
    }

    async fn query(
        &self,
        collection: &str,
        vector: &[f32],
        k: usize,
        filter: &VectorFilter,
    ) -> Result<Vec<(Uuid, f32)>> {
        let name = self.full_name(collection)?;
        let Some(col) = self.existing(&name).await? else {
            return Ok(Vec::new());
        };
        if let Some(d) = col.dims
            && d != vector.len()
        {
            return Err(MemoryError::BadInput(format!(
                "collection `{collection}` holds vectors of dimension {d}; the query has dimension {}",
                vector.len()
            )));
        }
        if vector.iter().any(|f| !f.is_finite()) {
            return Err(MemoryError::BadInput(
                "the query vector has a NaN or infinite value".into(),
            ));
        }
        let clause = match where_clause(filter) {
            Some(None) => return Ok(Vec::new()),
            Some(Some(w)) => Some(w),
            None => None,
        };
        if k == 0 {
            return Ok(Vec::new());
        }
        let n = u32::try_from(k).unwrap_or(u32::MAX);
        let mut body = json!({
            "query_embeddings": [vector],
            "n_results": n,
            "include": ["distances"],
        });
        if let (Some(w), Some(obj)) = (clause, body.as_object_mut()) {
            obj.insert("where".into(), w);
        }
        let Some(reply) = self
            .on_collection::<QueryReply>(&col, Method::POST, "query", Some(&body))
            .await?
        else {
            self.forget(&name);
            return Ok(Vec::new());
        };
        let ids = reply.ids.into_iter().next().unwrap_or_default();
        let distances = reply
            .distances
            .and_then(|d| d.into_iter().next())
            .unwrap_or_default();
        if ids.len() != distances.len() {
            return Err(err(format!(
                "query: ChromaDB answered {} ids but {} distances",
                ids.len(),
                distances.len()
            )));
        }
        let mut hits = Vec::with_capacity(ids.len());
        for (id, d) in ids.iter().zip(distances) {
            let Ok(uuid) = Uuid::parse_str(id) else {
                tracing::warn!(collection = %name, id = %id, "skipping a ChromaDB record whose id is not a UUID");
                continue;
            };
            let Some(d) = d else {
                return Err(err(format!("query: no distance for {id}")));
            };
            hits.push((uuid, 1.0 - d));
        }
        hits.sort_by(|a, b| b.1.total_cmp(&a.1));
        hits.truncate(k);
        Ok(hits)
    }

    async fn delete(&self, collection: &str, ids: &[Uuid]) -> Result<u64> {
        let name = self.full_name(collection)?;
        if ids.is_empty() {
            return Ok(0);
        }
        let Some(col) = self.existing(&name).await? else {
            return Ok(0);
        };
        let mut seen = HashSet::new();
        let ids: Vec<String> = ids
            .iter()
            .filter(|id| seen.insert(**id))
            .map(Uuid::to_string)
            .collect();
        let mut n = 0u64;
        for chunk in ids.chunks(BATCH) {
            // Chroma's `deleted` counts the ids asked for, so find those that exist first.
            let Some(found) = self.present(&col, chunk).await? else {
                self.forget(&name);
                return Ok(n);
            };
            if found.is_empty() {
                continue;
            }
            if !self.delete_ids(&col, &found).await? {
                self.forget(&name);
                return Ok(n);
            }
            n += found.len() as u64;
        }
        Ok(n)
    }

    async fn delete_where(&self, collection: &str, filter: &VectorFilter) -> Result<u64> {
        let name = self.full_name(collection)?;
        let clause = match where_clause(filter) {
            Some(None) => return Ok(0),
            Some(Some(w)) => w,
            // Every record matches an empty filter (`{"$and": []}`; verified).
            None => json!({"$and": []}),
        };
        let Some(col) = self.existing(&name).await? else {
            return Ok(0);
        };
        // Collect the matching ids, then delete them by id: an exact count whatever Chroma's
        // `deleted` means, as in the embedded tier.
        let mut ids: Vec<String> = Vec::new();
        loop {
            let body = json!({
                "where": clause,
                "include": [],
                "limit": BATCH,
                "offset": ids.len(),
            });
            let Some(page) = self
                .on_collection::<GetReply>(&col, Method::POST, "get", Some(&body))
                .await?
            else {
                self.forget(&name);
                return Ok(0);
            };
            let len = page.ids.len();
            ids.extend(page.ids);
            if len < BATCH {
                break;
            }
        }
        let mut n = 0u64;
        for chunk in ids.chunks(BATCH) {
            if !self.delete_ids(&col, chunk).await? {
                self.forget(&name);
                return Ok(n);
            }
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    async fn reset(&self, collection: &str) -> Result<()> {
        let name = self.full_name(collection)?;
        let r = self
            .send(Method::DELETE, &format!("/collections/{name}"), None)
            .await?;
        self.forget(&name);
        if r.status.is_success() || r.collection_missing() {
            Ok(())
        } else {
            Err(r.error("delete collection"))
        }
    }

    async fn count(&self, collection: &str) -> Result<u64> {
        let name = self.full_name(collection)?;
        let Some(col) = self.existing(&name).await? else {
            return Ok(0);
        };
        let r = self
            .send(Method::GET, &format!("/collections/{}/count", col.id), None)
            .await?;
        if r.collection_missing() {
            self.forget(&name);
            return Ok(0);
        }
        r.decode("count")
    }

    async fn flush(&self) -> Result<()> {
        // The server persists every acknowledged write itself.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn where_clauses() {
        assert_eq!(where_clause(&VectorFilter::new()), None);
        let one = VectorFilter::from([("user".to_owned(), json!("alice"))]);
        assert_eq!(where_clause(&one), Some(Some(json!({"user": "alice"}))));
        let two = VectorFilter::from([
            ("user".to_owned(), json!("bob")),
            ("n".to_owned(), json!(7)),
        ]);
        assert_eq!(
            where_clause(&two),
            Some(Some(json!({"$and": [{"n": 7}, {"user": "bob"}]})))
        );
        let never = VectorFilter::from([("user".to_owned(), Value::Null)]);
        assert_eq!(where_clause(&never), Some(None));
    }

    #[test]
    fn errors_keep_status_and_message() {
        let r = Reply {
            status: StatusCode::BAD_REQUEST,
            body: br#"{"error":"InvalidArgumentError","message":"Collection expecting embedding with dimension of 4, got 3"}"#.to_vec(),
        };
        assert!(matches!(r.error("upsert"), MemoryError::BadInput(m) if m.contains("dimension")));
        let r = Reply {
            status: StatusCode::BAD_REQUEST,
            body: br#"{"error":"InvalidArgumentError","message":"Invalid where clause"}"#.to_vec(),
        };
        let e = r.error("query").to_string();
        assert!(
            e.contains("400") && e.contains("Invalid where clause"),
            "{e}"
        );
        let r = Reply {
            status: StatusCode::NOT_FOUND,
            body: Vec::new(),
        };
        assert!(!r.collection_missing());
        let r = Reply {
            status: StatusCode::NOT_FOUND,
            body: br#"{"error":"NotFoundError","message":"Collection [x] does not exist."}"#
                .to_vec(),
        };
        assert!(r.collection_missing());
    }

    #[test]
    fn duplicate_ids_keep_the_last() {
        let id = Uuid::now_v7();
        let other = Uuid::now_v7();
        let it = |id: Uuid, x: f32| VectorItem {
            id,
            vector: vec![x],
            meta: BTreeMap::new(),
        };
        let items = [it(id, 1.0), it(other, 2.0), it(id, 3.0)];
        let kept: Vec<f32> = last_of_each(&items).iter().map(|i| i.vector[0]).collect();
        assert_eq!(kept, [2.0, 3.0]);
    }

    /// Against a live server, when `LOTUS_CHROMA_URL` is set (the conformance suite covers the
    /// rest): what Chroma does differently from the embedded tier is hidden.
    #[tokio::test]
    async fn live_server_semantics() {
        let Ok(url) = std::env::var("LOTUS_CHROMA_URL") else {
            eprintln!("skipped: LOTUS_CHROMA_URL is not set");
            return;
        };
        let prefix = format!("u{}_", Uuid::now_v7().simple());
        let v = ChromaVectors::connect(&url)
            .await
            .expect("connect")
            .with_prefix(prefix.clone());
        let meta = |pairs: &[(&str, Value)]| -> BTreeMap<String, Value> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect()
        };
        let id = Uuid::now_v7();
        let first = VectorItem {
            id,
            vector: vec![1.0, 0.0, 0.0, 0.0],
            meta: meta(&[
                ("user", json!("a")),
                ("kind", json!("fact")),
                ("n", json!(1)),
            ]),
        };
        v.upsert("sem", std::slice::from_ref(&first))
            .await
            .expect("upsert");
        // Metadata is replaced, not merged.
        let second = VectorItem {
            meta: meta(&[("user", json!("a")), ("gone", Value::Null)]),
            ..first.clone()
        };
        v.upsert("sem", &[first.clone(), second])
            .await
            .expect("upsert");
        assert_eq!(v.count("sem").await.expect("count"), 1);
        let kind = meta(&[("kind", json!("fact"))]);
        let q = [1.0, 0.0, 0.0, 0.0];
        assert!(
            v.query("sem", &q, 5, &kind)
                .await
                .expect("query")
                .is_empty()
        );
        let user = meta(&[("user", json!("a"))]);
        assert_eq!(v.query("sem", &q, 5, &user).await.expect("query").len(), 1);
        assert!(
            v.query("sem", &q, 5, &meta(&[("user", Value::Null)]))
                .await
                .expect("query")
                .is_empty()
        );
        // A fresh client learns the dimensions from the server.
        let fresh = ChromaVectors::connect(&url)
            .await
            .expect("connect")
            .with_prefix(prefix.clone());
        let e = fresh
            .query("sem", &[1.0; 3], 5, &VectorFilter::new())
            .await
            .expect_err("dimension");
        assert!(
            matches!(&e, MemoryError::BadInput(m) if m.contains("dimension")),
            "{e}"
        );
        assert_eq!(fresh.delete("sem", &[id, id]).await.expect("delete"), 1);

        // Batches and pages beyond BATCH; an empty filter matches everything.
        let many: Vec<VectorItem> = (0..2 * BATCH + 17)
            .map(|i| VectorItem {
                id: Uuid::now_v7(),
                vector: vec![1.0, i as f32, 0.5, 0.0],
                meta: meta(&[("user", json!(if i % 3 == 0 { "x" } else { "y" }))]),
            })
            .collect();
        v.upsert("sem", &many).await.expect("upsert many");
        assert_eq!(v.count("sem").await.expect("count"), many.len() as u64);
        let xs = many.iter().filter(|i| i.meta["user"] == json!("x")).count() as u64;
        assert_eq!(
            v.delete_where("sem", &meta(&[("user", json!("x"))]))
                .await
                .expect("delete_where"),
            xs
        );
        assert_eq!(
            v.delete_where("sem", &VectorFilter::new())
                .await
                .expect("delete_where"),
            many.len() as u64 - xs
        );
        assert_eq!(v.count("sem").await.expect("count"), 0);

        // Bad names and unreachable servers are clear errors.
        assert!(matches!(
            v.count("Bad-Name").await,
            Err(MemoryError::BadInput(_))
        ));
        let e = ChromaVectors::connect("http://127.0.0.1:9")
            .await
            .expect_err("nothing listens on port 9");
        assert!(
            e.to_string().contains("http://127.0.0.1:9 does not answer"),
            "{e}"
        );

        let r = v
            .send(Method::DELETE, &format!("/collections/{prefix}sem"), None)
            .await
            .expect("drop");
        assert!(r.status.is_success());
    }
}
