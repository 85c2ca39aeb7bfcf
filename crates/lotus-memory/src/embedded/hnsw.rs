//! The graph of the embedded vector index: HNSW (Malkov & Yashunin, 2016), written for LOTUS.
//!
//! Rows of encoded vectors sit in one contiguous buffer; the neighbour lists of the base layer
//! in another (`1 + 2M` words a node: length, then ids); the upper layers, which few nodes reach,
//! in one small list per node. While a node is expanded, the rows of its unvisited neighbours
//! are prefetched before any distance is taken, so their cache misses overlap.
//!
//! Adding takes `&mut self`: the rows are written first, then the new nodes are linked from
//! several threads at once, each neighbour list guarded by its node's lock (lists are atomics,
//! so this is all safe code). Searching takes `&self` and runs while nothing is added, so it
//! reads the lists without locks. Removing marks a node deleted: it still routes searches but is
//! never returned.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::distance::{self, Metric};
use super::vectors::Quantization;

const MAGIC: &[u8; 8] = b"LOTUSHNS";
const VERSION: u32 = 1;
const MAX_LEVEL: u8 = 24;

/// A node and its distance to the query, ordered by distance.
#[derive(Clone, Copy, Debug)]
struct Near(f32, u32);

impl PartialEq for Near {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Near {}
impl PartialOrd for Near {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Near {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

/// Which nodes a search has seen: a tag per node, reset by moving to the next tag.
struct Visited {
    tags: Vec<u32>,
    epoch: u32,
}

impl Visited {
    fn new() -> Self {
        Self {
            tags: Vec::new(),
            epoch: 0,
        }
    }

    fn reset(&mut self, nodes: usize) {
        if self.tags.len() < nodes {
            self.tags.resize(nodes, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.tags.fill(0);
            self.epoch = 1;
        }
    }

    /// Marks `i`; false when it was already marked.
    fn insert(&mut self, i: u32) -> bool {
        let t = &mut self.tags[i as usize];
        if *t == self.epoch {
            false
        } else {
            *t = self.epoch;
            true
        }
    }
}

/// The graph parameters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    pub quantization: Quantization,
    /// Neighbours per node above the base layer (M); the base layer keeps 2M.
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
}

pub(crate) struct Hnsw {
    dims: usize,
    params: Params,
    metric: Metric,
    /// Bytes per row.
    stride: usize,
    m0: usize,
    vectors: Vec<u8>,
    links0: Vec<AtomicU32>,
    upper: Vec<Box<[AtomicU32]>>,
    levels: Vec<u8>,
    keys: Vec<u64>,
    slots: FxHashMap<u64, u32>,
    deleted: Vec<bool>,
    /// The entry node and its level.
    entry: Mutex<Option<(u32, u8)>>,
    locks: Vec<Mutex<()>>,
    rng: u64,
    pool: Mutex<Vec<(Visited, Vec<u32>)>>,
}

impl Hnsw {
    pub(crate) fn new(dims: usize, params: Params) -> Self {
        Self {
            dims,
            metric: Metric::new(params.quantization, dims),
            stride: distance::row_bytes(params.quantization, dims),
            m0: params.m * 2,
            params,
            vectors: Vec::new(),
            links0: Vec::new(),
            upper: Vec::new(),
            levels: Vec::new(),
            keys: Vec::new(),
            slots: FxHashMap::default(),
            deleted: Vec::new(),
            entry: Mutex::new(None),
            locks: Vec::new(),
            rng: 0x5eed_1075,
            pool: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn dims(&self) -> usize {
        self.dims
    }

    /// Live (not deleted) nodes.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Nodes, deleted ones included.
    #[cfg(test)]
    pub(crate) fn nodes(&self) -> usize {
        self.keys.len()
    }

    fn row(&self, slot: u32) -> &[u8] {
        let s = slot as usize * self.stride;
        &self.vectors[s..s + self.stride]
    }

    fn links(&self, slot: u32, level: u8) -> &[AtomicU32] {
        if level == 0 {
            let s = slot as usize * (self.m0 + 1);
            &self.links0[s..s + self.m0 + 1]
        } else {
            let s = (level as usize - 1) * (self.params.m + 1);
            &self.upper[slot as usize][s..s + self.params.m + 1]
        }
    }

    /// The neighbour list of `slot` at `level` into `out`; under the node's lock while nodes
    /// are being linked (`locked`).
    fn neighbors(&self, slot: u32, level: u8, locked: bool, out: &mut Vec<u32>) {
        let _g = locked.then(|| self.locks[slot as usize].lock());
        let l = self.links(slot, level);
        let n = (l[0].load(Relaxed) as usize).min(l.len() - 1);
        out.clear();
        out.extend(l[1..=n].iter().map(|a| a.load(Relaxed)));
    }

    fn set_links(&self, slot: u32, level: u8, ids: impl ExactSizeIterator<Item = u32>) {
        let l = self.links(slot, level);
        let n = ids.len().min(l.len() - 1);
        for (a, id) in l[1..].iter().zip(ids) {
            a.store(id, Relaxed);
        }
        l[0].store(n as u32, Relaxed);
    }

    fn draw_level(&mut self) -> u8 {
        let mut rng = crate::quality::Rng(self.rng);
        let u = f64::from(rng.unit()).max(1e-12);
        self.rng = rng.0;
        let ml = 1.0 / (self.params.m.max(2) as f64).ln();
        ((-u.ln() * ml) as u8).min(MAX_LEVEL)
    }

    /// Adds `items` (key, vector of `dims`) linking from `threads` threads. A key already
    /// present is replaced.
    pub(crate) fn add(&mut self, items: &[(u64, &[f32])], threads: usize) {
        let start = self.keys.len();
        let n = items.len();
        self.vectors.reserve(n * self.stride);
        self.links0.reserve(n * (self.m0 + 1));
        for &(key, v) in items {
            if let Some(old) = self.slots.remove(&key) {
                self.deleted[old as usize] = true;
            }
            let slot = self.keys.len() as u32;
            let at = self.vectors.len();
            self.vectors.resize(at + self.stride, 0);
            distance::encode(self.params.quantization, v, &mut self.vectors[at..]);
            self.links0.extend((0..=self.m0).map(|_| AtomicU32::new(0)));
            let level = self.draw_level();
            self.upper.push(
                (0..level as usize * (self.params.m + 1))
                    .map(|_| AtomicU32::new(0))
                    .collect(),
            );
            self.levels.push(level);
            self.keys.push(key);
            self.deleted.push(false);
            self.locks.push(Mutex::new(()));
            self.slots.insert(key, slot);
        }
        let mut first = start;
        if n > 0 && self.entry.get_mut().is_none() {
            *self.entry.get_mut() = Some((start as u32, self.levels[start]));
            first += 1;
        }
        let this = &*self;
        let next = AtomicUsize::new(first);
        let work = || {
            let mut visited = Visited::new();
            let mut scratch = Vec::new();
            loop {
                let slot = next.fetch_add(1, Relaxed);
                if slot >= start + n {
                    break;
                }
                this.link(slot as u32, &mut visited, &mut scratch);
            }
        };
        let threads = threads.clamp(1, 64);
        if threads == 1 || n < 256 {
            work();
        } else {
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(work);
                }
            });
        }
    }

    /// Marks `key` deleted; false when absent.
    pub(crate) fn remove(&mut self, key: u64) -> bool {
        match self.slots.remove(&key) {
            Some(slot) => {
                self.deleted[slot as usize] = true;
                true
            }
            None => false,
        }
    }

    /// Walks down from `level_from` to just above `level_to`, always to the closest neighbour.
    fn greedy(
        &self,
        q: &[u8],
        mut cur: Near,
        level_from: u8,
        level_to: u8,
        locked: bool,
        scratch: &mut Vec<u32>,
    ) -> Near {
        let mut level = level_from;
        while level > level_to {
            loop {
                self.neighbors(cur.1, level, locked, scratch);
                let mut changed = false;
                for &n in scratch.iter() {
                    let d = self.metric.distance(q, self.row(n));
                    if d < cur.0 {
                        cur = Near(d, n);
                        changed = true;
                    }
                }
                if !changed {
                    break;
                }
            }
            level -= 1;
        }
        cur
    }

    /// The `ef` nearest accepted nodes of one layer (best-first search from `entry`).
    #[allow(clippy::too_many_arguments)]
    fn search_layer(
        &self,
        q: &[u8],
        entry: &[Near],
        ef: usize,
        level: u8,
        locked: bool,
        accept: &dyn Fn(u32) -> bool,
        visited: &mut Visited,
        scratch: &mut Vec<u32>,
    ) -> BinaryHeap<Near> {
        let mut candidates: BinaryHeap<Reverse<Near>> = BinaryHeap::with_capacity(ef * 4);
        let mut top: BinaryHeap<Near> = BinaryHeap::with_capacity(ef + 1);
        for &e in entry {
            if visited.insert(e.1) {
                candidates.push(Reverse(e));
                if accept(e.1) {
                    top.push(e);
                    if top.len() > ef {
                        top.pop();
                    }
                }
            }
        }
        while let Some(Reverse(c)) = candidates.pop() {
            if top.len() >= ef && top.peek().is_some_and(|t| c.0 > t.0) {
                break;
            }
            self.neighbors(c.1, level, locked, scratch);
            scratch.retain(|&n| visited.insert(n));
            for &n in scratch.iter() {
                distance::prefetch(self.row(n));
            }
            for &n in scratch.iter() {
                let d = self.metric.distance(q, self.row(n));
                if top.len() < ef || top.peek().is_some_and(|t| d < t.0) {
                    candidates.push(Reverse(Near(d, n)));
                    if accept(n) {
                        top.push(Near(d, n));
                        if top.len() > ef {
                            top.pop();
                        }
                    }
                }
            }
        }
        top
    }

    /// Up to `m` of `sorted` (nearest first) that are closer to the base than to any one kept
    /// before them: neighbours in several directions rather than one cluster.
    fn select(&self, sorted: &[Near], m: usize) -> Vec<Near> {
        if sorted.len() <= m {
            return sorted.to_vec();
        }
        let mut out: Vec<Near> = Vec::with_capacity(m);
        for &c in sorted {
            if out.len() >= m {
                break;
            }
            let row = self.row(c.1);
            if out
                .iter()
                .all(|r| self.metric.distance(row, self.row(r.1)) >= c.0)
            {
                out.push(c);
            }
        }
        out
    }

    /// Links the new node `slot` into every layer up to its level.
    fn link(&self, slot: u32, visited: &mut Visited, scratch: &mut Vec<u32>) {
        let level = self.levels[slot as usize];
        let q = self.row(slot);
        let Some((ep, top_level)) = *self.entry.lock() else {
            return;
        };
        let mut cur = Near(self.metric.distance(q, self.row(ep)), ep);
        cur = self.greedy(q, cur, top_level, level, true, scratch);
        let mut entry = vec![cur];
        for lev in (0..=level.min(top_level)).rev() {
            visited.reset(self.keys.len());
            let found = self
                .search_layer(
                    q,
                    &entry,
                    self.params.ef_construction,
                    lev,
                    true,
                    &|s| s != slot,
                    visited,
                    scratch,
                )
                .into_sorted_vec();
            let chosen = self.select(&found, self.params.m);
            {
                let _g = self.locks[slot as usize].lock();
                self.set_links(slot, lev, chosen.iter().map(|c| c.1));
            }
            let max = if lev == 0 { self.m0 } else { self.params.m };
            for c in &chosen {
                self.connect(c.1, slot, c.0, lev, max, scratch);
            }
            if !found.is_empty() {
                entry = found;
            }
        }
        if level > top_level {
            let mut e = self.entry.lock();
            if e.is_none_or(|(_, l)| level > l) {
                *e = Some((slot, level));
            }
        }
    }

    /// Adds `new` (at distance `d`) to the list of `node`, pruning it back to `max`.
    fn connect(&self, node: u32, new: u32, d: f32, level: u8, max: usize, scratch: &mut Vec<u32>) {
        let _g = self.locks[node as usize].lock();
        self.neighbors(node, level, false, scratch);
        if scratch.contains(&new) {
            return;
        }
        if scratch.len() < max {
            scratch.push(new);
            self.set_links(node, level, scratch.iter().copied());
            return;
        }
        let base = self.row(node);
        let mut all: Vec<Near> = scratch
            .iter()
            .map(|&n| Near(self.metric.distance(base, self.row(n)), n))
            .chain(std::iter::once(Near(d, new)))
            .collect();
        all.sort_unstable();
        let kept = self.select(&all, max);
        self.set_links(node, level, kept.iter().map(|c| c.1));
    }

    /// The `k` nearest live nodes whose key `filter` accepts, nearest first, with distances.
    pub(crate) fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<(u64, f32)> {
        let Some((ep, top_level)) = *self.entry.lock() else {
            return Vec::new();
        };
        if k == 0 || query.len() != self.dims {
            return Vec::new();
        }
        let mut q = vec![0u8; self.stride];
        distance::encode(self.params.quantization, query, &mut q);
        let (mut visited, mut scratch) = self
            .pool
            .lock()
            .pop()
            .unwrap_or_else(|| (Visited::new(), Vec::new()));
        visited.reset(self.keys.len());
        let cur = Near(self.metric.distance(&q, self.row(ep)), ep);
        let cur = self.greedy(&q, cur, top_level, 0, false, &mut scratch);
        let accept = |slot: u32| {
            !self.deleted[slot as usize] && filter.is_none_or(|f| f(self.keys[slot as usize]))
        };
        let top = self.search_layer(
            &q,
            &[cur],
            self.params.ef_search.max(k),
            0,
            false,
            &accept,
            &mut visited,
            &mut scratch,
        );
        self.pool.lock().push((visited, scratch));
        top.into_sorted_vec()
            .into_iter()
            .take(k)
            .map(|n| (self.keys[n.1 as usize], n.0))
            .collect()
    }

    /// The `k` nearest of the live nodes among `keys`, nearest first, by computing the distance
    /// to each: for a filter that selects few nodes, which a graph search would wade through
    /// many others to collect.
    pub(crate) fn scan(
        &self,
        query: &[f32],
        keys: impl Iterator<Item = u64>,
        k: usize,
    ) -> Vec<(u64, f32)> {
        if k == 0 || query.len() != self.dims {
            return Vec::new();
        }
        let mut q = vec![0u8; self.stride];
        distance::encode(self.params.quantization, query, &mut q);
        // The k nearest so far, the farthest on top.
        let mut best: BinaryHeap<Near> = BinaryHeap::with_capacity(k + 1);
        for key in keys {
            let Some(&slot) = self.slots.get(&key) else {
                continue;
            };
            let d = self.metric.distance(&q, self.row(slot));
            if best.len() < k {
                best.push(Near(d, slot));
            } else if best.peek().is_some_and(|far| d < far.0) {
                best.pop();
                best.push(Near(d, slot));
            }
        }
        best.into_sorted_vec()
            .into_iter()
            .map(|n| (self.keys[n.1 as usize], n.0))
            .collect()
    }

    /// Writes the graph to `w`, ending with a checksum of everything before it.
    pub(crate) fn save(&self, w: impl Write) -> io::Result<()> {
        let mut w = Crc::new(w);
        let (entry, entry_level) = self.entry.lock().map_or((u32::MAX, 0), |e| e);
        w.write_all(MAGIC)?;
        for x in [
            VERSION,
            self.dims as u32,
            self.params.m as u32,
            self.params.ef_construction as u32,
            entry,
        ] {
            w.write_all(&x.to_le_bytes())?;
        }
        w.write_all(&[quant_code(self.params.quantization), entry_level])?;
        w.write_all(&(self.keys.len() as u64).to_le_bytes())?;
        w.write_all(&self.rng.to_le_bytes())?;
        let mut buf = Vec::with_capacity(1 << 16);
        for (i, key) in self.keys.iter().enumerate() {
            buf.extend_from_slice(&key.to_le_bytes());
            buf.push(self.levels[i]);
            buf.push(u8::from(self.deleted[i]));
            if buf.len() >= 1 << 16 {
                w.write_all(&buf)?;
                buf.clear();
            }
        }
        w.write_all(&buf)?;
        w.write_all(&self.vectors)?;
        let mut words = |list: &[AtomicU32], w: &mut Crc<_>| -> io::Result<()> {
            buf.clear();
            for a in list {
                buf.extend_from_slice(&a.load(Relaxed).to_le_bytes());
                if buf.len() >= 1 << 16 {
                    w.write_all(&buf)?;
                    buf.clear();
                }
            }
            w.write_all(&buf)
        };
        words(&self.links0, &mut w)?;
        for u in &self.upper {
            words(u, &mut w)?;
        }
        let crc = w.hasher.clone().finalize();
        w.inner.write_all(&crc.to_le_bytes())?;
        w.inner.flush()
    }

    /// Reads a graph written by [`Hnsw::save`] from `r` (of `size` bytes), checking it whole;
    /// `ef_search` is the caller's.
    pub(crate) fn load(r: impl Read, size: u64, ef_search: usize) -> Result<Self, String> {
        let mut r = Crc::new(r);
        let bad = |what: &str| format!("the index file is damaged ({what})");
        let io = |e: io::Error| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                "the index file is truncated".to_owned()
            } else {
                e.to_string()
            }
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(io)?;
        if &magic != MAGIC {
            return Err("not a LOTUS vector index file".into());
        }
        let mut u32s = [0u32; 5];
        for x in &mut u32s {
            *x = read_u32(&mut r).map_err(io)?;
        }
        let [version, dims, m, ef_construction, entry] = u32s;
        if version != VERSION {
            return Err(format!(
                "index format {version}; this LOTUS reads format {VERSION}"
            ));
        }
        let mut two = [0u8; 2];
        r.read_exact(&mut two).map_err(io)?;
        let quantization = match two[0] {
            0 => Quantization::F32,
            1 => Quantization::F16,
            2 => Quantization::I8,
            _ => return Err(bad("quantization")),
        };
        let entry_level = two[1];
        let nodes = read_u64(&mut r).map_err(io)?;
        let rng = read_u64(&mut r).map_err(io)?;
        if dims == 0 || dims > 1 << 16 || !(2..=1024).contains(&m) || nodes >= u64::from(u32::MAX) {
            return Err(bad("header"));
        }
        let nodes = nodes as usize;
        let per_node =
            distance::row_bytes(quantization, dims as usize) + 10 + (2 * m as usize + 1) * 4;
        if (nodes as u64).saturating_mul(per_node as u64) > size {
            return Err("the index file is truncated".into());
        }
        let mut h = Hnsw::new(
            dims as usize,
            Params {
                quantization,
                m: m as usize,
                ef_construction: ef_construction as usize,
                ef_search,
            },
        );
        h.rng = rng;
        let mut rec = [0u8; 10];
        for i in 0..nodes {
            r.read_exact(&mut rec).map_err(io)?;
            let key = u64::from_le_bytes(rec[..8].try_into().map_err(|_| bad("keys"))?);
            if rec[8] > MAX_LEVEL || rec[9] > 1 {
                return Err(bad("node levels"));
            }
            h.keys.push(key);
            h.levels.push(rec[8]);
            h.deleted.push(rec[9] == 1);
            h.locks.push(Mutex::new(()));
            if rec[9] == 0 && h.slots.insert(key, i as u32).is_some() {
                return Err(bad("a key twice"));
            }
        }
        h.vectors = vec![0u8; nodes * h.stride];
        r.read_exact(&mut h.vectors).map_err(io)?;
        // Read a few thousand lists at a time, so loading needs no more memory than the graph.
        let mut bytes = Vec::new();
        let mut read_words =
            |r: &mut Crc<_>, n: usize, max: usize| -> Result<Vec<AtomicU32>, String> {
                let mut out = Vec::with_capacity(n);
                let per = (max + 1) * 4096;
                while out.len() < n {
                    let take = per.min(n - out.len());
                    bytes.resize(take * 4, 0);
                    r.read_exact(&mut bytes).map_err(io)?;
                    let words: Vec<u32> = bytes
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    // Each list: a length, then that many ids of existing nodes.
                    for list in words.chunks(max + 1) {
                        let len = list[0] as usize;
                        if len > max
                            || list.len() < len + 1
                            || list[1..=len].iter().any(|&id| id as usize >= nodes)
                        {
                            return Err(bad("neighbour lists"));
                        }
                    }
                    out.extend(words.into_iter().map(AtomicU32::new));
                }
                Ok(out)
            };
        h.links0 = read_words(&mut r, nodes * (h.m0 + 1), h.m0)?;
        for i in 0..nodes {
            let level = h.levels[i] as usize;
            let list = read_words(&mut r, level * (h.params.m + 1), h.params.m)?;
            h.upper.push(list.into_boxed_slice());
        }
        let want = r.hasher.clone().finalize();
        let got = read_u32(&mut r.inner).map_err(io)?;
        if want != got {
            return Err(bad("checksum mismatch"));
        }
        if nodes > 0 {
            if entry as usize >= nodes || entry_level != h.levels[entry as usize] {
                return Err(bad("entry node"));
            }
            *h.entry.get_mut() = Some((entry, entry_level));
        }
        Ok(h)
    }
}

fn quant_code(q: Quantization) -> u8 {
    match q {
        Quantization::F32 => 0,
        Quantization::F16 => 1,
        Quantization::I8 => 2,
    }
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// A reader or writer that keeps a CRC-32 of the bytes through it.
struct Crc<T> {
    inner: T,
    hasher: crc32fast::Hasher,
}

impl<T> Crc<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            hasher: crc32fast::Hasher::new(),
        }
    }
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::Rng;

    fn data(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = Rng(seed);
        (0..n)
            .map(|_| (0..dims).map(|_| rng.normal()).collect())
            .collect()
    }

    fn exact(base: &[Vec<f32>], q: &[f32], k: usize, skip: impl Fn(usize) -> bool) -> Vec<u64> {
        let cos = |a: &[f32], b: &[f32]| {
            let ab: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            ab / (n(a) * n(b))
        };
        let mut all: Vec<(f32, u64)> = base
            .iter()
            .enumerate()
            .filter(|(i, _)| !skip(*i))
            .map(|(i, v)| (cos(q, v), i as u64))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        all.into_iter().take(k).map(|x| x.1).collect()
    }

    fn params(q: Quantization) -> Params {
        Params {
            quantization: q,
            m: 16,
            ef_construction: 128,
            ef_search: 64,
        }
    }

    fn recall(h: &Hnsw, base: &[Vec<f32>], queries: &[Vec<f32>]) -> f64 {
        let mut hits = 0;
        for q in queries {
            let want = exact(base, q, 10, |i| !h.slots.contains_key(&(i as u64)));
            let got: Vec<u64> = h.search(q, 10, None).into_iter().map(|x| x.0).collect();
            hits += got.iter().filter(|g| want.contains(g)).count();
        }
        hits as f64 / (queries.len() * 10) as f64
    }

    #[test]
    fn finds_the_true_neighbours_in_every_encoding_built_on_two_threads() {
        let base = data(3000, 32, 1);
        let queries = data(50, 32, 2);
        for (q, floor) in [
            (Quantization::F32, 0.97),
            (Quantization::F16, 0.96),
            (Quantization::I8, 0.85),
        ] {
            let mut h = Hnsw::new(32, params(q));
            let items: Vec<(u64, &[f32])> = base
                .iter()
                .enumerate()
                .map(|(i, v)| (i as u64, &v[..]))
                .collect();
            h.add(&items[..1000], 1);
            h.add(&items[1000..], 2);
            assert_eq!(h.len(), 3000);
            let r = recall(&h, &base, &queries);
            assert!(r >= floor, "{q:?}: recall@10 {r}");
            // Distances come back ascending and match the exact ones.
            let got = h.search(&queries[0], 10, None);
            assert!(got.windows(2).all(|w| w[0].1 <= w[1].1));
        }
    }

    #[test]
    fn removed_and_filtered_nodes_are_never_returned_and_replacing_a_key_keeps_one() {
        let base = data(2000, 16, 3);
        let mut h = Hnsw::new(16, params(Quantization::F32));
        let items: Vec<(u64, &[f32])> = base
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, &v[..]))
            .collect();
        h.add(&items, 2);
        for key in (0..2000).step_by(3) {
            assert!(h.remove(key));
        }
        assert!(!h.remove(0), "already removed");
        let queries = data(30, 16, 4);
        for q in &queries {
            let got = h.search(q, 10, Some(&|k| k % 2 == 0));
            assert_eq!(got.len(), 10);
            assert!(got.iter().all(|(k, _)| k % 3 != 0 && k % 2 == 0), "{got:?}");
        }
        assert!(recall(&h, &base, &queries) > 0.9);
        // A key added again replaces its node: one hit, at the new place.
        let moved = queries[0].clone();
        h.add(&[(1, &moved[..])], 1);
        let got = h.search(&moved, 5, None);
        assert_eq!(got[0].0, 1);
        assert!(got[0].1 < 1e-5);
        assert_eq!(got.iter().filter(|(k, _)| *k == 1).count(), 1);
    }

    #[test]
    fn saved_graphs_load_identically_and_damage_is_reported() {
        let base = data(1500, 24, 5);
        let mut h = Hnsw::new(24, params(Quantization::F16));
        let items: Vec<(u64, &[f32])> = base
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64 * 7, &v[..]))
            .collect();
        h.add(&items, 2);
        h.remove(14);
        let mut bytes = Vec::new();
        h.save(&mut bytes).expect("save");
        let l = Hnsw::load(&bytes[..], bytes.len() as u64, 64).expect("load");
        assert_eq!((l.len(), l.nodes(), l.dims()), (h.len(), h.nodes(), 24));
        for q in data(20, 24, 6) {
            assert_eq!(h.search(&q, 10, None), l.search(&q, 10, None));
        }
        // Every kind of damage is an error, never a panic.
        for at in [0, 9, 40, bytes.len() / 2, bytes.len() - 1] {
            let mut d = bytes.clone();
            d[at] ^= 0x40;
            assert!(
                Hnsw::load(&d[..], d.len() as u64, 64).is_err(),
                "flipped byte {at}"
            );
        }
        for len in [0, 7, 30, bytes.len() / 3, bytes.len() - 2] {
            let e = Hnsw::load(&bytes[..len], len as u64, 64)
                .err()
                .expect("a truncated file is refused");
            assert!(
                e.contains("truncated") || e.contains("not a LOTUS"),
                "{len}: {e}"
            );
        }
        // An empty graph round-trips too.
        let mut bytes = Vec::new();
        Hnsw::new(8, params(Quantization::I8))
            .save(&mut bytes)
            .expect("save");
        let e = Hnsw::load(&bytes[..], bytes.len() as u64, 64).expect("load");
        assert!(e.search(&[1.0; 8], 3, None).is_empty());
    }
}
