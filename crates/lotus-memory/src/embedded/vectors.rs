//! L3 embedded: one HNSW index (usearch) per collection, on disk, crash-safe.
//!
//! Each collection is a folder:
//! - `MANIFEST` (JSON): the generation in force, dimensions, quantization, next key;
//! - `index-GEN.usearch` and `items-GEN.bin`: the snapshot of that generation (the graph with
//!   its vectors; the ids and metadata of its keys);
//! - `wal.bin`: every change since the snapshot, one checksummed record each, synced before the
//!   change is applied.
//!
//! Opening loads the snapshot named by `MANIFEST` and replays the log; a record torn by a crash
//! (short, or failing its checksum) ends the log and is cut off. A checkpoint writes the next
//! generation's files, syncs them, then replaces `MANIFEST` (write, sync, rename) — the moment
//! the new generation takes effect — and only then empties the log and removes the old files.
//! Replaying a record the snapshot already holds changes nothing, so a `kill -9` at any moment
//! leaves a loadable index that has every change whose `upsert` or `delete` returned.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};
use uuid::Uuid;

use crate::tiers::{MemoryError, Result, VectorFilter, VectorItem, Vectors};

fn err(e: impl std::fmt::Display) -> MemoryError {
    MemoryError::backend("vectors", "embedded", e)
}

/// How vectors are stored in the index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// 4 bytes per dimension: exact.
    #[default]
    F32,
    /// 2 bytes per dimension.
    F16,
    /// 1 byte per dimension.
    I8,
}

impl Quantization {
    fn scalar(self) -> ScalarKind {
        match self {
            Quantization::F32 => ScalarKind::F32,
            Quantization::F16 => ScalarKind::F16,
            Quantization::I8 => ScalarKind::I8,
        }
    }
}

/// Parameters of new indexes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// How vectors are stored.
    pub quantization: Quantization,
    /// Graph degree (M).
    pub connectivity: usize,
    /// Candidates considered while adding (ef_construction).
    pub expansion_add: usize,
    /// Candidates considered while searching (ef).
    pub expansion_search: usize,
    /// Log size (bytes) after which a checkpoint is written.
    pub checkpoint_bytes: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            quantization: Quantization::F32,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            checkpoint_bytes: 64 << 20,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    generation: u64,
    dimensions: usize,
    quantization: Quantization,
    next_key: u64,
}

struct Item {
    id: Uuid,
    meta: BTreeMap<String, Value>,
}

struct State {
    index: Option<Index>,
    dims: usize,
    quantization: Quantization,
    by_id: HashMap<Uuid, u64>,
    items: HashMap<u64, Item>,
    next_key: u64,
    generation: u64,
}

struct Collection {
    dir: PathBuf,
    config: IndexConfig,
    state: RwLock<State>,
    /// The log, and its length; held while a change is logged and applied, so both happen in
    /// the same order.
    wal: Mutex<(File, u64)>,
}

/// The embedded vector tier: a folder of collections.
pub struct EmbeddedVectors {
    dir: PathBuf,
    config: IndexConfig,
    collections: Mutex<HashMap<String, Arc<Collection>>>,
    _lock: File,
}

impl EmbeddedVectors {
    /// Opens the folder `dir` (created if missing), taking its lock: one process at a time.
    pub fn open(dir: &Path, config: IndexConfig) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(err)?;
        lock.try_lock().map_err(|_| {
            err(format!(
                "the vector index at {} is in use by another lotus process (a running `lotus up`?)",
                dir.display()
            ))
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            config,
            collections: Mutex::new(HashMap::new()),
            _lock: lock,
        })
    }

    fn collection(&self, name: &str) -> Result<Arc<Collection>> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(MemoryError::BadInput(format!(
                "`{name}` is not a collection name: use lowercase letters, digits and `_`"
            )));
        }
        let mut cols = self.collections.lock();
        if let Some(c) = cols.get(name) {
            return Ok(c.clone());
        }
        let c = Arc::new(Collection::open(&self.dir.join(name), self.config)?);
        cols.insert(name.to_owned(), c.clone());
        Ok(c)
    }

    /// Bytes on disk of every collection.
    pub fn disk_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            std::fs::read_dir(p).map_or(0, |rd| {
                rd.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
        }
        walk(&self.dir)
    }
}

fn new_index(dims: usize, q: Quantization, c: &IndexConfig) -> Result<Index> {
    let index = Index::new(&IndexOptions {
        dimensions: dims,
        metric: MetricKind::Cos,
        quantization: q.scalar(),
        connectivity: c.connectivity,
        expansion_add: c.expansion_add,
        expansion_search: c.expansion_search,
        multi: false,
    })
    .map_err(err)?;
    Ok(index)
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

const OP_UPSERT: u8 = 1;
const OP_DELETE: u8 = 2;

fn encode_upsert(out: &mut Vec<u8>, item: &VectorItem) -> Result<()> {
    let meta = serde_json::to_vec(&item.meta).map_err(err)?;
    let mut payload = Vec::with_capacity(1 + 16 + 8 + meta.len() + item.vector.len() * 4);
    payload.push(OP_UPSERT);
    payload.extend_from_slice(item.id.as_bytes());
    payload.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    payload.extend_from_slice(&meta);
    payload.extend_from_slice(&(item.vector.len() as u32).to_le_bytes());
    for f in &item.vector {
        payload.extend_from_slice(&f.to_le_bytes());
    }
    frame(out, &payload);
    Ok(())
}

fn encode_delete(out: &mut Vec<u8>, id: &Uuid) {
    let mut payload = Vec::with_capacity(17);
    payload.push(OP_DELETE);
    payload.extend_from_slice(id.as_bytes());
    frame(out, &payload);
}

fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

enum Record {
    Upsert(VectorItem),
    Delete(Uuid),
}

fn decode(payload: &[u8]) -> Option<Record> {
    let (&op, rest) = payload.split_first()?;
    let id = Uuid::from_slice(rest.get(..16)?).ok()?;
    let rest = &rest[16..];
    match op {
        OP_DELETE => Some(Record::Delete(id)),
        OP_UPSERT => {
            let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let meta = serde_json::from_slice(rest.get(4..4 + n)?).ok()?;
            let rest = &rest[4 + n..];
            let dims = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let floats = rest.get(4..4 + dims * 4)?;
            let vector = floats
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Some(Record::Upsert(VectorItem { id, vector, meta }))
        }
        _ => None,
    }
}

impl Collection {
    fn open(dir: &Path, config: IndexConfig) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut state = State {
            index: None,
            dims: 0,
            quantization: config.quantization,
            by_id: HashMap::new(),
            items: HashMap::new(),
            next_key: 1,
            generation: 0,
        };
        let manifest_path = dir.join("MANIFEST");
        if manifest_path.exists() {
            let m: Manifest = serde_json::from_slice(&std::fs::read(&manifest_path).map_err(err)?)
                .map_err(|e| err(format!("{}: {e}", manifest_path.display())))?;
            let index = new_index(m.dimensions, m.quantization, &config)?;
            let index_path = dir.join(format!("index-{}.usearch", m.generation));
            index
                .load(&index_path.to_string_lossy())
                .map_err(|e| err(format!("{}: {e}", index_path.display())))?;
            index
                .reserve_capacity_and_threads(index.size().max(1024), threads())
                .map_err(err)?;
            state.items = read_items(&dir.join(format!("items-{}.bin", m.generation)))?;
            state.by_id = state.items.iter().map(|(k, it)| (it.id, *k)).collect();
            state.index = Some(index);
            state.dims = m.dimensions;
            state.quantization = m.quantization;
            state.next_key = m.next_key;
            state.generation = m.generation;
        }
        // Files of other generations are leftovers of an interrupted checkpoint.
        if let Ok(rd) = std::fs::read_dir(dir) {
            let keep = [
                format!("index-{}.usearch", state.generation),
                format!("items-{}.bin", state.generation),
            ];
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if (name.starts_with("index-") || name.starts_with("items-"))
                    && !keep.contains(&name)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let wal_path = dir.join("wal.bin");
        let good = replay(&wal_path, &mut state, &config)?;
        let wal = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&wal_path)
            .map_err(err)?;
        if wal.metadata().map_err(err)?.len() > good {
            tracing::warn!(path = %wal_path.display(), "cutting off a log record torn by a crash");
            wal.set_len(good).map_err(err)?;
            wal.sync_all().map_err(err)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            config,
            state: RwLock::new(state),
            wal: Mutex::new((wal, good)),
        })
    }

    /// Writes the next generation and empties the log. Called with the log locked.
    fn checkpoint(&self, wal: &mut (File, u64)) -> Result<()> {
        let mut state = self.state.write();
        let Some(index) = &state.index else {
            return Ok(());
        };
        let generation = state.generation + 1;
        let index_path = self.dir.join(format!("index-{generation}.usearch"));
        index.save(&index_path.to_string_lossy()).map_err(err)?;
        File::open(&index_path)
            .and_then(|f| f.sync_all())
            .map_err(err)?;
        write_items(
            &self.dir.join(format!("items-{generation}.bin")),
            &state.items,
        )?;
        let manifest = Manifest {
            generation,
            dimensions: state.dims,
            quantization: state.quantization,
            next_key: state.next_key,
        };
        let tmp = self.dir.join("MANIFEST.tmp");
        {
            let mut f = File::create(&tmp).map_err(err)?;
            f.write_all(&serde_json::to_vec(&manifest).map_err(err)?)
                .map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, self.dir.join("MANIFEST")).map_err(err)?;
        sync_dir(&self.dir)?;
        // The new generation is in force: the log and the old files are no longer needed.
        wal.0.set_len(0).map_err(err)?;
        wal.0.sync_all().map_err(err)?;
        wal.1 = 0;
        let old = state.generation;
        state.generation = generation;
        let _ = std::fs::remove_file(self.dir.join(format!("index-{old}.usearch")));
        let _ = std::fs::remove_file(self.dir.join(format!("items-{old}.bin")));
        Ok(())
    }

    fn log(&self, wal: &mut (File, u64), bytes: &[u8]) -> Result<()> {
        use std::io::Seek as _;
        wal.0.seek(std::io::SeekFrom::Start(wal.1)).map_err(err)?;
        wal.0.write_all(bytes).map_err(err)?;
        wal.0.sync_data().map_err(err)?;
        wal.1 += bytes.len() as u64;
        Ok(())
    }
}

fn write_items(path: &Path, items: &HashMap<u64, Item>) -> Result<()> {
    let f = File::create(path).map_err(err)?;
    let mut w = BufWriter::new(f);
    let mut body = Vec::new();
    for (key, it) in items {
        body.extend_from_slice(&key.to_le_bytes());
        body.extend_from_slice(it.id.as_bytes());
        let meta = serde_json::to_vec(&it.meta).map_err(err)?;
        body.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        body.extend_from_slice(&meta);
    }
    w.write_all(&(items.len() as u64).to_le_bytes())
        .and_then(|()| w.write_all(&crc32fast::hash(&body).to_le_bytes()))
        .and_then(|()| w.write_all(&body))
        .map_err(err)?;
    let f = w.into_inner().map_err(err)?;
    f.sync_all().map_err(err)
}

fn read_items(path: &Path) -> Result<HashMap<u64, Item>> {
    let bad = |why: &str| err(format!("{}: {why}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(&e.to_string()))?;
    if bytes.len() < 12 {
        return Err(bad("truncated"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().map_err(|_| bad("truncated"))?);
    let crc = u32::from_le_bytes(bytes[8..12].try_into().map_err(|_| bad("truncated"))?);
    let body = &bytes[12..];
    if crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch (the file is damaged)"));
    }
    let mut items = HashMap::with_capacity(usize::try_from(n).unwrap_or(0));
    let mut rest = body;
    while !rest.is_empty() {
        let key = u64::from_le_bytes(
            rest.get(..8)
                .ok_or_else(|| bad("truncated"))?
                .try_into()
                .map_err(|_| bad("truncated"))?,
        );
        let id = Uuid::from_slice(rest.get(8..24).ok_or_else(|| bad("truncated"))?)
            .map_err(|e| bad(&e.to_string()))?;
        let len = u32::from_le_bytes(
            rest.get(24..28)
                .ok_or_else(|| bad("truncated"))?
                .try_into()
                .map_err(|_| bad("truncated"))?,
        ) as usize;
        let meta = serde_json::from_slice(rest.get(28..28 + len).ok_or_else(|| bad("truncated"))?)
            .map_err(|e| bad(&e.to_string()))?;
        items.insert(key, Item { id, meta });
        rest = &rest[28 + len..];
    }
    Ok(items)
}

/// Applies the log to `state`; returns the length of its intact prefix.
fn replay(path: &Path, state: &mut State, config: &IndexConfig) -> Result<u64> {
    let Ok(f) = File::open(path) else {
        return Ok(0);
    };
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut good = 0u64;
    let mut head = [0u8; 8];
    loop {
        if r.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > 64 << 20 {
            break;
        }
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            break;
        }
        let Some(rec) = decode(&payload) else {
            break;
        };
        match rec {
            Record::Upsert(item) => apply_upsert(state, config, std::slice::from_ref(&item))?,
            Record::Delete(id) => {
                apply_delete(state, &id)?;
            }
        }
        good += 8 + len as u64;
    }
    Ok(good)
}

fn apply_upsert(state: &mut State, config: &IndexConfig, items: &[VectorItem]) -> Result<()> {
    let Some(first) = items.first() else {
        return Ok(());
    };
    if state.index.is_none() {
        state.dims = first.vector.len();
        state.quantization = config.quantization;
        state.index = Some(new_index(state.dims, state.quantization, config)?);
    }
    for it in items {
        apply_delete(state, &it.id)?;
    }
    let State {
        index,
        by_id,
        items: map,
        next_key,
        ..
    } = state;
    let Some(index) = index.as_ref() else {
        return Ok(());
    };
    let need = index.size() + items.len();
    if need > index.capacity() {
        index
            .reserve_capacity_and_threads(need.max(index.capacity() * 2).max(1024), threads())
            .map_err(err)?;
    }
    let first_key = *next_key;
    *next_key += items.len() as u64;
    let add = |chunk: &[VectorItem], base: u64| -> Result<()> {
        for (i, it) in chunk.iter().enumerate() {
            index.add(base + i as u64, &it.vector).map_err(err)?;
        }
        Ok(())
    };
    if items.len() >= 2048 {
        // Large batches (imports, benchmarks) are added from every core.
        let per = items.len().div_ceil(threads());
        std::thread::scope(|s| {
            let handles: Vec<_> = items
                .chunks(per)
                .enumerate()
                .map(|(c, chunk)| {
                    let add = &add;
                    s.spawn(move || add(chunk, first_key + (c * per) as u64))
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().map_err(|_| err("an index thread panicked"))?)
        })?;
    } else {
        add(items, first_key)?;
    }
    for (i, it) in items.iter().enumerate() {
        let key = first_key + i as u64;
        by_id.insert(it.id, key);
        map.insert(
            key,
            Item {
                id: it.id,
                meta: it.meta.clone(),
            },
        );
    }
    Ok(())
}

fn apply_delete(state: &mut State, id: &Uuid) -> Result<bool> {
    let Some(key) = state.by_id.remove(id) else {
        return Ok(false);
    };
    state.items.remove(&key);
    if let Some(index) = &state.index {
        index.remove(key).map_err(err)?;
    }
    Ok(true)
}

fn matches(meta: &BTreeMap<String, Value>, filter: &VectorFilter) -> bool {
    filter.iter().all(|(k, v)| meta.get(k) == Some(v))
}

#[async_trait]
impl Vectors for EmbeddedVectors {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn upsert(&self, collection: &str, items: &[VectorItem]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let c = self.collection(collection)?;
        let dims = {
            let s = c.state.read();
            if s.index.is_some() {
                s.dims
            } else {
                items[0].vector.len()
            }
        };
        crate::tiers::check_vectors(collection, dims, items)?;
        let mut bytes = Vec::new();
        for it in items {
            encode_upsert(&mut bytes, it)?;
        }
        let mut wal = c.wal.lock();
        c.log(&mut wal, &bytes)?;
        apply_upsert(&mut c.state.write(), &c.config, items)?;
        if wal.1 > c.config.checkpoint_bytes {
            c.checkpoint(&mut wal)?;
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
        let c = self.collection(collection)?;
        let s = c.state.read();
        let Some(index) = &s.index else {
            return Ok(Vec::new());
        };
        if vector.len() != s.dims {
            return Err(MemoryError::BadInput(format!(
                "collection `{collection}` holds {}-dimensional vectors; the query has {}",
                s.dims,
                vector.len()
            )));
        }
        if k == 0 || s.items.is_empty() {
            return Ok(Vec::new());
        }
        let found = if filter.is_empty() {
            index.search(vector, k)
        } else {
            index.filtered_search(vector, k, |key| {
                s.items
                    .get(&key)
                    .is_some_and(|it| matches(&it.meta, filter))
            })
        }
        .map_err(err)?;
        Ok(found
            .keys
            .iter()
            .zip(&found.distances)
            .filter_map(|(key, d)| s.items.get(key).map(|it| (it.id, 1.0 - d)))
            .collect())
    }

    async fn delete(&self, collection: &str, ids: &[Uuid]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let c = self.collection(collection)?;
        let present: Vec<&Uuid> = {
            let s = c.state.read();
            ids.iter().filter(|i| s.by_id.contains_key(i)).collect()
        };
        if present.is_empty() {
            return Ok(0);
        }
        let mut bytes = Vec::new();
        for id in &present {
            encode_delete(&mut bytes, id);
        }
        let mut wal = c.wal.lock();
        c.log(&mut wal, &bytes)?;
        let mut s = c.state.write();
        let mut n = 0;
        for id in present {
            n += u64::from(apply_delete(&mut s, id)?);
        }
        Ok(n)
    }

    async fn delete_where(&self, collection: &str, filter: &VectorFilter) -> Result<u64> {
        let ids: Vec<Uuid> = {
            let c = self.collection(collection)?;
            let s = c.state.read();
            s.items
                .values()
                .filter(|it| matches(&it.meta, filter))
                .map(|it| it.id)
                .collect()
        };
        self.delete(collection, &ids).await
    }

    async fn count(&self, collection: &str) -> Result<u64> {
        Ok(self.collection(collection)?.state.read().items.len() as u64)
    }

    async fn flush(&self) -> Result<()> {
        let cols: Vec<_> = self.collections.lock().values().cloned().collect();
        for c in cols {
            let mut wal = c.wal.lock();
            if wal.1 > 0 {
                c.checkpoint(&mut wal)?;
            }
        }
        Ok(())
    }
}
