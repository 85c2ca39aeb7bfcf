//! L3 embedded: one HNSW graph ([`super::hnsw`]) per collection, on disk, crash-safe.
//!
//! Each collection is a folder:
//! - `MANIFEST` (JSON): the generation in force, dimensions, quantization, next key;
//! - `graph-GEN.bin` and `items-GEN.bin`: the snapshot of that generation (the graph with
//!   its vectors; the ids and metadata of its keys);
//! - `wal.bin`: every change since the snapshot, one checksummed record each, synced before the
//!   change is applied;
//! - `exact.f32`, for a quantized collection: every vector exactly (normalized f32, the row of
//!   key `k` at `k × dims × 4`), read back with `pread` to re-rank a search's best candidates.
//!   It is written as changes are applied and synced by each checkpoint before `MANIFEST`; the
//!   log holds the same vectors, so replaying it rewrites any row a crash lost.
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
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::tiers::{MemoryError, Result, VectorFilter, VectorItem, Vectors};

use super::hnsw::{Hnsw, Params};

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
    /// Log size (bytes) after which a checkpoint is written (or half the size of the last
    /// snapshot, when that is larger).
    pub checkpoint_bytes: u64,
    /// For f16 and i8: how many of a search's best candidates are re-ranked against the exact
    /// vectors kept on disk (at least `k`; 0 turns re-ranking off). Quantization keeps the
    /// graph small in memory; re-ranking gives back the order its rounding blurs.
    pub rerank: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            quantization: Quantization::F32,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            checkpoint_bytes: 64 << 20,
            rerank: 100,
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
    /// The graph's file format: 2 is LOTUS's own HNSW (format 1, usearch's, is not read).
    #[serde(default = "usearch_format")]
    format: u32,
    /// Whether `exact.f32` holds every vector (quantized collections written by this version).
    #[serde(default)]
    exact: bool,
}

const FORMAT: u32 = 2;

fn usearch_format() -> u32 {
    1
}

/// An item of the index: its id and its metadata, interned. A million items with a user tag
/// each take tens of megabytes here, not the hundreds a map per item would.
struct Item {
    id: Uuid,
    /// The set of interned `(field, scalar value)` pairs the item holds.
    set: u32,
}

/// The items by key, in a vector: keys are handed out in order from 1, so a key is its own
/// index, and the place of a deleted item stays empty (as its node in the graph does).
#[derive(Default)]
struct Items {
    slots: Vec<Item>,
    live: usize,
}

/// A filter selecting at most this many items is answered by computing the distance to each
/// (exact, and at 384 dimensions about a millisecond) rather than by a graph search, which
/// would visit many items the filter rejects to collect enough it accepts.
const SCAN_MAX: u64 = 10_000;

/// The set of an empty place.
const VACANT: u32 = u32::MAX;

impl Items {
    fn get(&self, key: u64) -> Option<&Item> {
        let it = self.slots.get(usize::try_from(key).ok()?)?;
        (it.set != VACANT).then_some(it)
    }

    fn insert(&mut self, key: u64, item: Item) {
        let at = usize::try_from(key).unwrap_or(usize::MAX);
        if at >= self.slots.len() {
            self.slots.resize_with(at + 1, || Item {
                id: Uuid::nil(),
                set: VACANT,
            });
        }
        if self.slots[at].set == VACANT {
            self.live += 1;
        }
        self.slots[at] = item;
    }

    fn remove(&mut self, key: u64) -> Option<Item> {
        let slot = self.slots.get_mut(usize::try_from(key).ok()?)?;
        if slot.set == VACANT {
            return None;
        }
        self.live -= 1;
        Some(std::mem::replace(
            slot,
            Item {
                id: Uuid::nil(),
                set: VACANT,
            },
        ))
    }

    fn len(&self) -> usize {
        self.live
    }

    fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &Item)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, it)| it.set != VACANT)
            .map(|(key, it)| (key as u64, it))
    }
}

/// How a query's filter selects items.
enum Scope {
    /// Every item: no filter, or one every item matches (a single user's laptop).
    All,
    /// No item holds one of the filter's pairs.
    Nothing,
    /// Items whose pair set is marked true here.
    Sets(Vec<bool>),
    /// A filter on a non-scalar value: compared in full.
    Full,
}

/// The interning key of a metadata pair, for scalar values only.
fn tag_key(field: &str, value: &Value) -> Option<String> {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            Some(format!("{field}\u{0}{value}"))
        }
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// The exact vectors of a quantized collection, on disk (`exact.f32`).
struct Exact {
    file: File,
    /// Bytes per row.
    row: usize,
    metric: super::distance::Metric,
}

impl Exact {
    const FILE: &str = "exact.f32";

    /// Opens the file of `dir`: a new, empty one when `fresh` (a collection starting from
    /// nothing), else the one its snapshot says is there.
    fn open(dir: &Path, dims: usize, fresh: bool) -> Result<Self> {
        let path = dir.join(Self::FILE);
        let file = OpenOptions::new()
            .create(fresh)
            .truncate(fresh)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
                err(format!(
                    "{}: {e}; run `lotus memory reindex` to rebuild the index",
                    path.display()
                ))
            })?;
        // Rows are read one at a time at random: reading ahead would fetch 32 pages for each.
        if let Err(e) = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Random) {
            tracing::debug!(error = %e, "no read-ahead advice for {}", path.display());
        }
        Ok(Self {
            file,
            row: super::distance::row_bytes(Quantization::F32, dims),
            metric: super::distance::Metric::new(Quantization::F32, dims),
        })
    }

    /// Writes the rows of consecutive keys from `first`.
    fn write(&self, first: u64, vectors: &[&[f32]]) -> Result<()> {
        use std::os::unix::fs::FileExt as _;
        let mut buf = vec![0u8; self.row * vectors.len()];
        for (v, out) in vectors.iter().zip(buf.chunks_exact_mut(self.row)) {
            super::distance::encode(Quantization::F32, v, out);
        }
        self.file
            .write_all_at(&buf, first * self.row as u64)
            .map_err(err)
    }

    /// Orders `found` by exact distance to `query` and keeps the best `k`.
    fn rerank(&self, query: &[f32], found: &mut Vec<(u64, f32)>, k: usize) -> Result<()> {
        use std::os::unix::fs::FileExt as _;
        let mut q = vec![0u8; self.row];
        super::distance::encode(Quantization::F32, query, &mut q);
        let mut row = vec![0u8; self.row];
        for (key, d) in found.iter_mut() {
            self.file
                .read_exact_at(&mut row, *key * self.row as u64)
                .map_err(|e| err(format!("{}: the row of key {key}: {e}", Self::FILE)))?;
            *d = self.metric.distance(&q, &row);
        }
        found.sort_unstable_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        found.truncate(k);
        Ok(())
    }
}

struct State {
    index: Option<Hnsw>,
    /// The exact vectors, when the index is quantized.
    exact: Option<Exact>,
    dims: usize,
    quantization: Quantization,
    by_id: FxHashMap<Uuid, u64>,
    items: Items,
    /// Metadata fields with array or object values (rare), by item key.
    other: FxHashMap<u64, BTreeMap<String, Value>>,
    /// Interned metadata pairs: by key, their field and value, and how many items hold each.
    tags: HashMap<String, u32>,
    tag_pairs: Vec<(String, Value)>,
    tag_counts: Vec<u64>,
    /// Interned sets of pairs (sorted tags): a few per user, shared by all their items.
    sets: HashMap<Box<[u32]>, u32>,
    set_tags: Vec<Box<[u32]>>,
    /// The keys of each set's items (a removed item's key stays until the list is tidied),
    /// and how many of them are live: a filter selecting few items scans them exactly.
    set_keys: Vec<Vec<u64>>,
    set_live: Vec<u64>,
    next_key: u64,
    generation: u64,
    /// Size of the snapshot in force: the log may grow to half of it before the next one, so
    /// rewriting a large index stays a small share of the writes.
    snapshot_bytes: u64,
}

impl State {
    fn new(quantization: Quantization) -> Self {
        Self {
            index: None,
            exact: None,
            dims: 0,
            quantization,
            by_id: FxHashMap::default(),
            items: Items::default(),
            other: FxHashMap::default(),
            tags: HashMap::new(),
            tag_pairs: Vec::new(),
            tag_counts: Vec::new(),
            sets: HashMap::new(),
            set_tags: Vec::new(),
            set_keys: Vec::new(),
            set_live: Vec::new(),
            next_key: 1,
            generation: 0,
            snapshot_bytes: 0,
        }
    }

    fn insert_item(&mut self, key: u64, id: Uuid, meta: BTreeMap<String, Value>) {
        let mut tags = Vec::with_capacity(meta.len());
        let mut other = BTreeMap::new();
        for (f, v) in meta {
            let Some(k) = tag_key(&f, &v) else {
                other.insert(f, v);
                continue;
            };
            let next = self.tag_pairs.len() as u32;
            let t = *self.tags.entry(k).or_insert(next);
            if t == next {
                self.tag_pairs.push((f, v));
                self.tag_counts.push(0);
            }
            self.tag_counts[t as usize] += 1;
            tags.push(t);
        }
        tags.sort_unstable();
        let tags: Box<[u32]> = tags.into();
        let set = match self.sets.get(&tags) {
            Some(&set) => set,
            None => {
                let set = self.set_tags.len() as u32;
                self.set_tags.push(tags.clone());
                self.set_keys.push(Vec::new());
                self.set_live.push(0);
                self.sets.insert(tags, set);
                set
            }
        };
        self.set_keys[set as usize].push(key);
        self.set_live[set as usize] += 1;
        if !other.is_empty() {
            self.other.insert(key, other);
        }
        self.by_id.insert(id, key);
        self.items.insert(key, Item { id, set });
    }

    fn remove_item(&mut self, key: u64) -> Option<Item> {
        let it = self.items.remove(key)?;
        for t in &self.set_tags[it.set as usize] {
            self.tag_counts[*t as usize] -= 1;
        }
        let set = it.set as usize;
        self.set_live[set] -= 1;
        let live = self.set_live[set] as usize;
        if self.set_keys[set].len() > 2 * live + 64 {
            let items = &self.items;
            self.set_keys[set].retain(|&k| items.get(k).is_some());
        }
        self.other.remove(&key);
        Some(it)
    }

    /// The metadata of the item at `key`, as it was given.
    fn meta(&self, key: u64, it: &Item) -> BTreeMap<String, Value> {
        let mut meta: BTreeMap<String, Value> = self.set_tags[it.set as usize]
            .iter()
            .map(|t| self.tag_pairs[*t as usize].clone())
            .collect();
        if let Some(other) = self.other.get(&key) {
            meta.extend(other.iter().map(|(f, v)| (f.clone(), v.clone())));
        }
        meta
    }

    fn scope(&self, filter: &VectorFilter) -> Scope {
        if filter.is_empty() {
            return Scope::All;
        }
        let mut tags = Vec::with_capacity(filter.len());
        for (f, v) in filter {
            let Some(k) = tag_key(f, v) else {
                return Scope::Full;
            };
            match self.tags.get(&k) {
                Some(&t) if self.tag_counts[t as usize] > 0 => tags.push(t),
                _ => return Scope::Nothing,
            }
        }
        if tags.len() == 1 && self.tag_counts[tags[0] as usize] == self.items.len() as u64 {
            return Scope::All;
        }
        Scope::Sets(
            self.set_tags
                .iter()
                .map(|set| tags.iter().all(|t| set.binary_search(t).is_ok()))
                .collect(),
        )
    }

    /// How many items the sets marked in `ok` hold.
    fn selected(&self, ok: &[bool]) -> u64 {
        ok.iter()
            .zip(&self.set_live)
            .filter(|(on, _)| **on)
            .map(|(_, n)| n)
            .sum()
    }

    /// The keys of the items of the sets marked in `ok` (and some removed ones).
    fn members<'a>(&'a self, ok: &'a [bool]) -> impl Iterator<Item = u64> + 'a {
        ok.iter()
            .zip(&self.set_keys)
            .filter(|(on, _)| **on)
            .flat_map(|(_, keys)| keys.iter().copied())
    }

    /// Whether the item at `key` is in `scope` of `filter`.
    fn selects(&self, scope: &Scope, filter: &VectorFilter, key: u64) -> bool {
        let Some(it) = self.items.get(key) else {
            return false;
        };
        match scope {
            Scope::All => true,
            Scope::Nothing => false,
            Scope::Sets(ok) => ok[it.set as usize],
            Scope::Full => {
                let meta = self.meta(key, it);
                filter.iter().all(|(k, v)| meta.get(k) == Some(v))
            }
        }
    }
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
        crate::tiers::check_collection(name)?;
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

fn new_index(dims: usize, q: Quantization, c: &IndexConfig) -> Hnsw {
    Hnsw::new(
        dims,
        Params {
            quantization: q,
            m: c.connectivity.clamp(2, 1024),
            ef_construction: c.expansion_add.max(1),
            ef_search: c.expansion_search.max(1),
        },
    )
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
        let mut state = State::new(config.quantization);
        let manifest_path = dir.join("MANIFEST");
        if manifest_path.exists() {
            let m: Manifest = serde_json::from_slice(&std::fs::read(&manifest_path).map_err(err)?)
                .map_err(|e| err(format!("{}: {e}", manifest_path.display())))?;
            if m.format != FORMAT {
                return Err(err(format!(
                    "{} holds a vector index written by an earlier LOTUS (format {}); run \
                     `lotus memory reindex` to replace it with one built from the stored \
                     memories",
                    dir.display(),
                    m.format
                )));
            }
            let graph_path = dir.join(format!("graph-{}.bin", m.generation));
            let file = File::open(&graph_path)
                .map_err(|e| err(format!("{}: {e}", graph_path.display())))?;
            let size = file.metadata().map_err(err)?.len();
            state.snapshot_bytes = size;
            let index = Hnsw::load(
                BufReader::with_capacity(1 << 20, file),
                size,
                config.expansion_search,
            )
            .map_err(|e| err(format!("{}: {e}", graph_path.display())))?;
            read_items(
                &dir.join(format!("items-{}.bin", m.generation)),
                |key, id, meta| {
                    if key == 0 || key >= m.next_key {
                        return Err(err(format!(
                            "{}: an item has the key {key}, outside the keys handed out (1 to {}): the snapshot is damaged",
                            dir.display(),
                            m.next_key.saturating_sub(1)
                        )));
                    }
                    state.insert_item(key, id, meta);
                    Ok(())
                },
            )?;
            if index.len() != state.items.len() || index.dims() != m.dimensions {
                return Err(err(format!(
                    "{}: the graph holds {} vectors and the item list {}: the snapshot is damaged",
                    dir.display(),
                    index.len(),
                    state.items.len()
                )));
            }
            if m.exact {
                state.exact = Some(Exact::open(dir, m.dimensions, false)?);
            }
            state.index = Some(index);
            state.dims = m.dimensions;
            state.quantization = m.quantization;
            state.next_key = m.next_key;
            state.generation = m.generation;
        }
        // Files of other generations are leftovers of an interrupted checkpoint.
        if let Ok(rd) = std::fs::read_dir(dir) {
            let keep = [
                format!("graph-{}.bin", state.generation),
                format!("items-{}.bin", state.generation),
            ];
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if (name.starts_with("graph-") || name.starts_with("items-"))
                    && !keep.contains(&name)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let wal_path = dir.join("wal.bin");
        let good = replay(dir, &wal_path, &mut state, &config)?;
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
        let graph_path = self.dir.join(format!("graph-{generation}.bin"));
        {
            let mut w = BufWriter::with_capacity(1 << 20, File::create(&graph_path).map_err(err)?);
            index.save(&mut w).map_err(err)?;
            w.into_inner()
                .map_err(|e| err(e.into_error()))?
                .sync_all()
                .map_err(err)?;
        }
        write_items(&self.dir.join(format!("items-{generation}.bin")), &state)?;
        if let Some(exact) = &state.exact {
            exact.file.sync_data().map_err(err)?;
        }
        let manifest = Manifest {
            generation,
            dimensions: state.dims,
            quantization: state.quantization,
            next_key: state.next_key,
            format: FORMAT,
            exact: state.exact.is_some(),
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
        state.snapshot_bytes = std::fs::metadata(&graph_path).map_or(0, |m| m.len());
        let _ = std::fs::remove_file(self.dir.join(format!("graph-{old}.bin")));
        let _ = std::fs::remove_file(self.dir.join(format!("items-{old}.bin")));
        Ok(())
    }

    /// Logs `bytes` (synced), then applies the change they record with `apply`; writes a
    /// checkpoint when the log has outgrown the configured size or half the last snapshot.
    fn write<T>(&self, bytes: &[u8], apply: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        use std::io::Seek as _;
        let mut guard = self.wal.lock();
        let wal = &mut *guard;
        wal.0.seek(std::io::SeekFrom::Start(wal.1)).map_err(err)?;
        wal.0.write_all(bytes).map_err(err)?;
        wal.0.sync_data().map_err(err)?;
        wal.1 += bytes.len() as u64;
        let (out, snapshot) = {
            let mut s = self.state.write();
            (apply(&mut s)?, s.snapshot_bytes)
        };
        if wal.1 > self.config.checkpoint_bytes.max(snapshot / 2) {
            self.checkpoint(wal)?;
        }
        Ok(out)
    }
}

/// Writes the ids and metadata of every item: the count and a checksum of the body, then per
/// item its key, id, and metadata as JSON. Streamed: the header is written last.
fn write_items(path: &Path, state: &State) -> Result<()> {
    use std::io::{Seek as _, SeekFrom};
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).map_err(err)?);
    w.write_all(&[0u8; 12]).map_err(err)?;
    let mut crc = crc32fast::Hasher::new();
    // The metadata of items without non-scalar fields is their set's, serialized once.
    let mut set_json: Vec<Option<Vec<u8>>> = vec![None; state.set_tags.len()];
    let mut head = [0u8; 28];
    for (key, it) in state.items.iter() {
        let owned;
        let meta: &[u8] = if state.other.contains_key(&key) {
            owned = serde_json::to_vec(&state.meta(key, it)).map_err(err)?;
            &owned
        } else {
            let cached = &mut set_json[it.set as usize];
            if cached.is_none() {
                *cached = Some(serde_json::to_vec(&state.meta(key, it)).map_err(err)?);
            }
            cached.as_deref().unwrap_or_default()
        };
        head[..8].copy_from_slice(&key.to_le_bytes());
        head[8..24].copy_from_slice(it.id.as_bytes());
        head[24..].copy_from_slice(&(meta.len() as u32).to_le_bytes());
        crc.update(&head);
        crc.update(meta);
        w.write_all(&head)
            .and_then(|()| w.write_all(meta))
            .map_err(err)?;
    }
    let mut f = w.into_inner().map_err(|e| err(e.into_error()))?;
    f.seek(SeekFrom::Start(0)).map_err(err)?;
    f.write_all(&(state.items.len() as u64).to_le_bytes())
        .and_then(|()| f.write_all(&crc.finalize().to_le_bytes()))
        .map_err(err)?;
    f.sync_all().map_err(err)
}

/// Reads the items `write_items` wrote, giving each to `each` as it is read; an error when the
/// file is short, damaged (checksum) or holds a different number of items than it says.
fn read_items(
    path: &Path,
    mut each: impl FnMut(u64, Uuid, BTreeMap<String, Value>) -> Result<()>,
) -> Result<()> {
    let bad = |why: &str| err(format!("{}: {why}", path.display()));
    let file = File::open(path).map_err(|e| bad(&e.to_string()))?;
    let size = file.metadata().map_err(|e| bad(&e.to_string()))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; 12];
    r.read_exact(&mut header).map_err(|_| bad("truncated"))?;
    let n = u64::from_le_bytes(header[..8].try_into().map_err(|_| bad("truncated"))?);
    let want = u32::from_le_bytes(header[8..].try_into().map_err(|_| bad("truncated"))?);
    if n > size / 28 {
        return Err(bad("truncated"));
    }
    let mut crc = crc32fast::Hasher::new();
    let mut head = [0u8; 28];
    let mut meta = Vec::new();
    for _ in 0..n {
        r.read_exact(&mut head).map_err(|_| bad("truncated"))?;
        let key = u64::from_le_bytes(head[..8].try_into().map_err(|_| bad("truncated"))?);
        let id = Uuid::from_slice(&head[8..24]).map_err(|e| bad(&e.to_string()))?;
        let len = u32::from_le_bytes(head[24..].try_into().map_err(|_| bad("truncated"))?);
        if u64::from(len) > size {
            return Err(bad("truncated"));
        }
        meta.resize(len as usize, 0);
        r.read_exact(&mut meta).map_err(|_| bad("truncated"))?;
        crc.update(&head);
        crc.update(&meta);
        let meta = serde_json::from_slice(&meta).map_err(|e| bad(&e.to_string()))?;
        each(key, id, meta)?;
    }
    if r.read(&mut [0u8; 1]).map_err(|e| bad(&e.to_string()))? != 0 {
        return Err(bad("more items than its header says (the file is damaged)"));
    }
    if crc.finalize() != want {
        return Err(bad("checksum mismatch (the file is damaged)"));
    }
    Ok(())
}

/// Applies the log to `state`; returns the length of its intact prefix.
fn replay(dir: &Path, path: &Path, state: &mut State, config: &IndexConfig) -> Result<u64> {
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
            Record::Upsert(item) => {
                apply_upsert(dir, state, config, std::slice::from_ref(&item))?;
            }
            Record::Delete(id) => {
                apply_delete(state, &id)?;
            }
        }
        good += 8 + len as u64;
    }
    Ok(good)
}

/// Applies an upsert to `state`, the collection in `dir` (where a quantized one keeps its exact
/// vectors).
fn apply_upsert(
    dir: &Path,
    state: &mut State,
    config: &IndexConfig,
    items: &[VectorItem],
) -> Result<()> {
    let Some(first) = items.first() else {
        return Ok(());
    };
    if state.index.is_none() {
        state.dims = first.vector.len();
        state.quantization = config.quantization;
        state.index = Some(new_index(state.dims, state.quantization, config));
        if state.quantization != Quantization::F32 {
            state.exact = Some(Exact::open(dir, state.dims, true)?);
        }
    }
    // An id given twice in one batch: the last one wins.
    let mut last: FxHashMap<Uuid, usize> = FxHashMap::default();
    for (i, it) in items.iter().enumerate() {
        last.insert(it.id, i);
    }
    let items: Vec<&VectorItem> = items
        .iter()
        .enumerate()
        .filter(|(i, it)| last.get(&it.id) == Some(i))
        .map(|(_, it)| it)
        .collect();
    for it in &items {
        apply_delete(state, &it.id)?;
    }
    let first_key = state.next_key;
    let batch: Vec<(u64, &[f32])> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (first_key + i as u64, &it.vector[..]))
        .collect();
    if let Some(exact) = &state.exact {
        let rows: Vec<&[f32]> = batch.iter().map(|b| b.1).collect();
        exact.write(first_key, &rows)?;
    }
    if let Some(index) = state.index.as_mut() {
        index.add(&batch, threads());
    }
    state.next_key += items.len() as u64;
    for (i, it) in items.iter().enumerate() {
        state.insert_item(first_key + i as u64, it.id, it.meta.clone());
    }
    Ok(())
}

fn apply_delete(state: &mut State, id: &Uuid) -> Result<bool> {
    let Some(key) = state.by_id.remove(id) else {
        return Ok(false);
    };
    state.remove_item(key);
    if let Some(index) = state.index.as_mut() {
        index.remove(key);
    }
    Ok(true)
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
        c.write(&bytes, |s| apply_upsert(&c.dir, s, &c.config, items))
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
        let exact = s.exact.as_ref().filter(|_| c.config.rerank > 0);
        let want = exact.map_or(k, |_| k.max(c.config.rerank));
        let scope = s.scope(filter);
        let mut found = match &scope {
            Scope::All => index.search(vector, want, None),
            Scope::Nothing => return Ok(Vec::new()),
            Scope::Sets(ok) if s.selected(ok) <= SCAN_MAX => {
                index.scan(vector, s.members(ok), want)
            }
            _ => index.search(vector, want, Some(&|key| s.selects(&scope, filter, key))),
        };
        if let Some(exact) = exact {
            exact.rerank(vector, &mut found, k)?;
        }
        Ok(found
            .into_iter()
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
        c.write(&bytes, |s| {
            let mut n = 0;
            for id in present {
                n += u64::from(apply_delete(s, id)?);
            }
            Ok(n)
        })
    }

    async fn delete_where(&self, collection: &str, filter: &VectorFilter) -> Result<u64> {
        let ids: Vec<Uuid> = {
            let c = self.collection(collection)?;
            let s = c.state.read();
            let scope = s.scope(filter);
            s.items
                .iter()
                .filter(|(key, _)| s.selects(&scope, filter, *key))
                .map(|(_, it)| it.id)
                .collect()
        };
        self.delete(collection, &ids).await
    }

    async fn count(&self, collection: &str) -> Result<u64> {
        Ok(self.collection(collection)?.state.read().items.len() as u64)
    }

    async fn reset(&self, collection: &str) -> Result<()> {
        crate::tiers::check_collection(collection)?;
        let mut cols = self.collections.lock();
        if let Some(c) = cols.remove(collection) {
            // Wait for a change in flight, then let go of the files.
            drop(c.wal.lock());
        }
        match std::fs::remove_dir_all(self.dir.join(collection)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(e)),
            _ => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn item(i: usize, meta: BTreeMap<String, Value>) -> VectorItem {
        let mut vector = vec![0.1; 8];
        vector[i % 8] = 1.0;
        VectorItem {
            id: Uuid::from_u128(i as u128 + 1),
            vector,
            meta,
        }
    }

    /// Interned metadata (scalars shared by sets, arrays and objects kept per item) comes back
    /// whole after a checkpoint and a reopen, and filters on either kind select the same items.
    #[tokio::test]
    async fn metadata_survives_a_checkpoint_and_filters_the_same() {
        let dir = std::env::temp_dir().join(format!("lotus-vec-meta-{}", Uuid::now_v7()));
        let items: Vec<VectorItem> = (0..30)
            .map(|i| {
                let mut m = BTreeMap::from([("user".to_owned(), json!(format!("u{}", i % 3)))]);
                if i % 5 == 0 {
                    m.insert("tags".into(), json!(["a", i]));
                }
                item(i, m)
            })
            .collect();
        let by_tags = BTreeMap::from([("tags".to_owned(), json!(["a", 10]))]);
        let check = |v: &EmbeddedVectors| {
            let c = v.collection("c").expect("the test store works");
            let s = c.state.read();
            assert_eq!(s.items.len(), 30);
            for (i, it) in items.iter().enumerate() {
                let key = s.by_id[&it.id];
                assert_eq!(
                    s.meta(key, s.items.get(key).expect("the test store works")),
                    it.meta,
                    "item {i}"
                );
            }
        };
        {
            let v =
                EmbeddedVectors::open(&dir, IndexConfig::default()).expect("the test store works");
            v.upsert("c", &items).await.expect("the test store works");
            check(&v);
            v.flush().await.expect("the test store works");
        }
        let v = EmbeddedVectors::open(&dir, IndexConfig::default()).expect("the test store works");
        check(&v);
        let user1 = BTreeMap::from([("user".to_owned(), json!("u1"))]);
        let hits = v
            .query("c", &items[4].vector, 30, &user1)
            .await
            .expect("the test store works");
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| (h.0.as_u128() - 1) % 3 == 1));
        let hits = v
            .query("c", &items[4].vector, 30, &by_tags)
            .await
            .expect("the test store works");
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [items[10].id]);
        assert_eq!(
            v.delete_where("c", &by_tags)
                .await
                .expect("the test store works"),
            1
        );
        assert_eq!(
            v.delete_where("c", &user1)
                .await
                .expect("the test store works"),
            9
        );
        assert_eq!(v.count("c").await.expect("the test store works"), 20);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A quantized collection keeps its exact vectors on disk and re-ranks a search's best
    /// candidates with them: on points so close together that i8 rounding scrambles their
    /// order, re-ranked hits are the exact neighbours with their exact similarity, after a log
    /// replay and after a checkpoint alike; with re-ranking off they are not.
    #[tokio::test]
    async fn a_quantized_collection_reranks_with_its_exact_vectors() {
        use crate::quality::Rng;
        let dir = std::env::temp_dir().join(format!("lotus-vec-exact-{}", Uuid::now_v7()));
        let dims = 32;
        let mut rng = Rng(7);
        let center: Vec<f32> = (0..dims).map(|_| rng.normal()).collect();
        let near = |rng: &mut Rng| -> Vec<f32> {
            center.iter().map(|c| c + 0.02 * rng.normal()).collect()
        };
        let items: Vec<VectorItem> = (0..2000)
            .map(|i| VectorItem {
                id: Uuid::from_u128(i + 1),
                vector: near(&mut rng),
                meta: BTreeMap::from([("user".to_owned(), json!(format!("u{}", i % 2)))]),
            })
            .collect();
        let queries: Vec<Vec<f32>> = (0..20).map(|_| near(&mut rng)).collect();
        let user0 = BTreeMap::from([("user".to_owned(), json!("u0"))]);
        let config = |rerank| IndexConfig {
            quantization: Quantization::I8,
            rerank,
            ..IndexConfig::default()
        };
        {
            let v = EmbeddedVectors::open(&dir, config(300)).expect("the test store works");
            for chunk in items.chunks(500) {
                v.upsert("c", chunk).await.expect("the test store works");
            }
            assert!(recall_at_10(&v, true, &items, &queries, &user0).await >= 0.99);
        }
        // Reopened from the log alone, then from a checkpoint.
        let v = EmbeddedVectors::open(&dir, config(300)).expect("the test store works");
        assert!(recall_at_10(&v, true, &items, &queries, &user0).await >= 0.99);
        v.flush().await.expect("the test store works");
        drop(v);
        let v = EmbeddedVectors::open(&dir, config(300)).expect("the test store works");
        assert!(recall_at_10(&v, true, &items, &queries, &user0).await >= 0.99);
        drop(v);
        let v = EmbeddedVectors::open(&dir, config(0)).expect("the test store works");
        let off = recall_at_10(&v, false, &items, &queries, &user0).await;
        assert!(off < 0.9, "i8 alone found {off}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A filter that selects few items among many (a small user beside a large one) is answered
    /// by an exact scan of them: all of them, nearest first, never a removed one.
    #[tokio::test]
    async fn a_small_users_items_are_all_found_among_many() {
        use crate::quality::Rng;
        let dir = std::env::temp_dir().join(format!("lotus-vec-scan-{}", Uuid::now_v7()));
        let mut rng = Rng(11);
        let items: Vec<VectorItem> = (0..3000)
            .map(|i| VectorItem {
                id: Uuid::from_u128(i + 1),
                vector: (0..16).map(|_| rng.normal()).collect(),
                meta: BTreeMap::from([(
                    "user".to_owned(),
                    json!(if i % 300 == 7 { "small" } else { "big" }),
                )]),
            })
            .collect();
        let v = EmbeddedVectors::open(&dir, IndexConfig::default()).expect("the test store works");
        v.upsert("c", &items).await.expect("the test store works");
        let small: Vec<&VectorItem> = items
            .iter()
            .filter(|it| it.meta["user"] == "small")
            .collect();
        assert_eq!(small.len(), 10);
        v.delete("c", &[small[0].id, small[5].id])
            .await
            .expect("the test store works");
        let filter = BTreeMap::from([("user".to_owned(), json!("small"))]);
        let q: Vec<f32> = (0..16).map(|_| rng.normal()).collect();
        let got = v
            .query("c", &q, 20, &filter)
            .await
            .expect("the test store works");
        let mut want: Vec<(f32, Uuid)> = small
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 0 && *i != 5)
            .map(|(_, it)| (cosine(&q, &it.vector), it.id))
            .collect();
        want.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            want.iter().map(|w| w.1).collect::<Vec<_>>()
        );
        for ((_, score), (exact, _)) in got.iter().zip(&want) {
            assert!((score - exact).abs() < 1e-5);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (n(a) * n(b))
    }

    /// recall@10 of `v` over `queries` (every other one filtered to `user0`), checking each hit's
    /// filter and, when `reranked`, its score against the exact similarity.
    async fn recall_at_10(
        v: &EmbeddedVectors,
        reranked: bool,
        items: &[VectorItem],
        queries: &[Vec<f32>],
        user0: &VectorFilter,
    ) -> f64 {
        let none = VectorFilter::new();
        let mut hits = 0;
        for (n, q) in queries.iter().enumerate() {
            let filter = if n % 2 == 0 { user0 } else { &none };
            let mut want: Vec<(f32, Uuid)> = items
                .iter()
                .filter(|it| filter.is_empty() || it.meta == *filter)
                .map(|it| (cosine(q, &it.vector), it.id))
                .collect();
            want.sort_by(|a, b| b.0.total_cmp(&a.0));
            let want: Vec<Uuid> = want.iter().take(10).map(|w| w.1).collect();
            let got = v
                .query("c", q, 10, filter)
                .await
                .expect("the test store works");
            assert_eq!(got.len(), 10);
            for (id, score) in &got {
                let it = &items[(id.as_u128() - 1) as usize];
                assert!(filter.is_empty() || it.meta == *filter);
                if reranked {
                    let exact = cosine(q, &it.vector);
                    assert!((score - exact).abs() < 1e-5, "{score} against {exact}");
                }
            }
            hits += got.iter().filter(|g| want.contains(&g.0)).count();
        }
        hits as f64 / (queries.len() * 10) as f64
    }
}
