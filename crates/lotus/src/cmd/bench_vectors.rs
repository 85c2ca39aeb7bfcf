//! `lotus bench memory`: memory quality on a seeded scenario (see `lotus_memory::quality`).
//! `lotus bench vectors`: the embedded vector index on generated clustered vectors with exact
//! ground truth — recall@10, query latency, build time, RSS, size on disk. `--export DIR` writes
//! the same data for `bench/compare_ann.py` (hnswlib, faiss, chromadb).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::time::Instant;

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use lotus_memory::embedded::{EmbeddedVectors, IndexConfig, Quantization};
use lotus_memory::quality::Rng;
use lotus_memory::{VectorItem, Vectors};
use serde_json::json;
use uuid::Uuid;

use crate::cli::{BenchMemoryArgs, BenchVectorsArgs};

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// Generated clustered vectors. Vector `i` is drawn from a generator seeded by `i`, so any part
/// of the set can be made again instead of held: ten million 384-dimensional vectors are 15 GB.
struct Data {
    seed: u64,
    centres: Vec<Vec<f32>>,
    /// Noise relative to the centre's length: neighbours are in the same cluster, mostly.
    spread: f32,
    dims: usize,
}

/// Queries are drawn from the generators numbered from here on, apart from the base vectors.
const QUERY_STREAM: u64 = 1 << 62;

impl Data {
    fn new(seed: u64, n: usize, dims: usize) -> Self {
        let mut rng = Rng(seed);
        let centres = (0..(n / 100).clamp(16, 4096))
            .map(|_| {
                let mut c: Vec<f32> = (0..dims).map(|_| rng.normal()).collect();
                normalize(&mut c);
                c
            })
            .collect();
        Self {
            seed,
            centres,
            spread: 1.0 / (dims as f32).sqrt() * 0.6,
            dims,
        }
    }

    /// Vector number `n` of the generator into `out`: a centre plus noise, unit length.
    fn draw(&self, n: u64, out: &mut [f32]) {
        let mut rng = Rng(self.seed ^ n.wrapping_mul(0xd134_2543_de82_ef95));
        let c = &self.centres[rng.below(self.centres.len())];
        for (o, x) in out.iter_mut().zip(c) {
            *o = x + self.spread * rng.normal();
        }
        normalize(out);
    }

    /// The base vectors `range`, row-major.
    fn base(&self, range: std::ops::Range<usize>) -> Vec<f32> {
        let mut out = vec![0.0; range.len() * self.dims];
        for (row, i) in out.chunks_exact_mut(self.dims).zip(range) {
            self.draw(i as u64, row);
        }
        out
    }

    /// `n` query vectors, row-major.
    fn queries(&self, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; n * self.dims];
        for (q, row) in out.chunks_exact_mut(self.dims).enumerate() {
            self.draw(QUERY_STREAM + q as u64, row);
        }
        out
    }
}

/// The exact `k` nearest (cosine = dot of unit vectors) of every query among the `n` base
/// vectors of its user (vector `i` and query `q` belong to user `i % users` and `q % users`),
/// generating the base vectors again on every core.
fn ground_truth(data: &Data, n: usize, queries: &[f32], k: usize, users: usize) -> Vec<Vec<u32>> {
    let dims = data.dims;
    let nq = queries.len() / dims;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = n.div_ceil(threads);
    let partial: Vec<Vec<Vec<(f32, u32)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut best: Vec<Vec<(f32, u32)>> = vec![Vec::with_capacity(k + 1); nq];
                    let (from, to) = (t * per, ((t + 1) * per).min(n));
                    let mut at = from;
                    while at < to {
                        let end = (at + 4096).min(to);
                        let rows = data.base(at..end);
                        for (q, best) in best.iter_mut().enumerate() {
                            let qv = &queries[q * dims..(q + 1) * dims];
                            // The first row of this chunk that belongs to the query's user.
                            let first = (q % users + users - at % users) % users;
                            for (j, v) in rows
                                .chunks_exact(dims)
                                .enumerate()
                                .skip(first)
                                .step_by(users)
                            {
                                let d = lotus_memory::embedded::dot(qv, v);
                                if best.len() < k || d > best[best.len() - 1].0 {
                                    let pos = best.partition_point(|b| b.0 >= d);
                                    best.insert(pos, (d, (at + j) as u32));
                                    best.truncate(k);
                                }
                            }
                        }
                        at = end;
                    }
                    best
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    (0..nq)
        .map(|q| {
            let mut all: Vec<(f32, u32)> = partial
                .iter()
                .filter_map(|p| p.get(q))
                .flatten()
                .copied()
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0));
            all.into_iter().take(k).map(|b| b.1).collect()
        })
        .collect()
}

fn rss_mb() -> f64 {
    let kb = super::bench::rss_kb(std::process::id(), "VmRSS:").unwrap_or(0);
    (kb as f64 / 1024.0 * 10.0).round() / 10.0
}

fn write_f32(path: &std::path::Path, data: &[f32]) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for x in data {
        f.write_all(&x.to_le_bytes())?;
    }
    f.flush()?;
    Ok(())
}

/// A folder removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the benchmark.
pub async fn run(a: BenchVectorsArgs) -> Result<()> {
    if [
        a.n,
        a.dims,
        a.queries,
        a.k,
        a.users,
        a.rounds,
        a.ef_construction,
        a.ef.len(),
    ]
    .contains(&0)
        || a.ef.contains(&0)
    {
        bail!(
            "--n, --dims, --queries, --k, --users, --rounds, --ef and --ef-construction must be positive"
        );
    }
    if u32::try_from(a.n).is_err() {
        bail!("--n may be at most {}", u32::MAX);
    }
    if a.n / a.users < a.k {
        bail!("each user needs at least --k vectors: lower --users or raise --n");
    }
    if a.users > 1 && a.export.is_some() {
        bail!("--export writes unfiltered data for the other libraries: use it with --users 1");
    }
    let quantization: Quantization = serde_json::from_value(json!(a.quantization))
        .map_err(|_| anyhow::anyhow!("--quantization must be f32, f16 or i8"))?;
    let t_gen = Instant::now();
    let data = Data::new(a.seed, a.n, a.dims);
    let queries = data.queries(a.queries);
    eprintln!(
        "{} × {} ({} clusters), {} queries; computing exact neighbours…",
        a.n,
        a.dims,
        data.centres.len(),
        a.queries,
    );
    let truth = ground_truth(&data, a.n, &queries, a.k, a.users);
    eprintln!("ground truth in {:.1} s", t_gen.elapsed().as_secs_f64());
    if let Some(dir) = &a.export {
        std::fs::create_dir_all(dir)?;
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("base.f32"))?);
        for at in (0..a.n).step_by(10_000) {
            for x in data.base(at..(at + 10_000).min(a.n)) {
                f.write_all(&x.to_le_bytes())?;
            }
        }
        f.flush()?;
        write_f32(&dir.join("queries.f32"), &queries)?;
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("truth.u32"))?);
        for row in &truth {
            for i in row {
                f.write_all(&i.to_le_bytes())?;
            }
        }
        f.flush()?;
        std::fs::write(
            dir.join("meta.json"),
            serde_json::to_vec(&json!({"n": a.n, "dims": a.dims, "queries": a.queries, "k": a.k}))?,
        )?;
    }

    let dir = TempDir(std::env::temp_dir().join(format!("lotus-bench-vectors-{}", Uuid::now_v7())));
    let rss_before = rss_mb();
    let config = IndexConfig {
        quantization,
        expansion_search: a.ef[0],
        expansion_add: a.ef_construction,
        rerank: a.rerank[0],
        ..IndexConfig::default()
    };
    let index = EmbeddedVectors::open(dir.path(), config)?;
    // Vector `i` has the id `i + 1`.
    let id = |i: usize| Uuid::from_u128(i as u128 + 1);
    let metas: Vec<BTreeMap<String, serde_json::Value>> = (0..a.users)
        .map(|u| BTreeMap::from([("user".to_owned(), json!(format!("user{u}")))]))
        .collect();
    let t_build = Instant::now();
    for at in (0..a.n).step_by(10_000) {
        let rows = data.base(at..(at + 10_000).min(a.n));
        let items: Vec<VectorItem> = rows
            .chunks_exact(a.dims)
            .enumerate()
            .map(|(j, v)| VectorItem {
                id: id(at + j),
                vector: v.to_vec(),
                meta: metas[(at + j) % a.users].clone(),
            })
            .collect();
        index.upsert("bench", &items).await?;
        if (at / 10_000) % 100 == 99 {
            eprintln!(
                "{} added ({:.0} s, RSS {} MB)",
                at + 10_000,
                t_build.elapsed().as_secs_f64(),
                rss_mb()
            );
        }
    }
    let build_s = t_build.elapsed().as_secs_f64();
    let t_flush = Instant::now();
    index.flush().await?;
    let checkpoint_s = t_flush.elapsed().as_secs_f64();
    let rss_after = rss_mb();
    eprintln!(
        "built in {build_s:.1} s, checkpoint {checkpoint_s:.1} s, RSS {rss_after} MB; querying…"
    );

    let truth: Vec<HashSet<u32>> = truth
        .iter()
        .map(|want| want.iter().copied().collect())
        .collect();
    let disk_mb = ((index.disk_bytes() as f64 / 1048576.0) * 10.0).round() / 10.0;
    let mut runs = Vec::new();
    let mut index = Some(index);
    let settings: Vec<(usize, usize)> =
        a.ef.iter()
            .flat_map(|&ef| a.rerank.iter().map(move |&rerank| (ef, rerank)))
            .collect();
    for (n, &(ef, rerank)) in settings.iter().enumerate() {
        // The first setting searches the index as built; the others reopen it from disk.
        let mut open_s = None;
        let current = match index.take() {
            Some(built) if n == 0 => built,
            built => {
                drop(built);
                let t_open = Instant::now();
                let reopened = EmbeddedVectors::open(
                    dir.path(),
                    IndexConfig {
                        expansion_search: ef,
                        rerank,
                        ..config
                    },
                )?;
                // Collections load on first use.
                reopened.count("bench").await?;
                open_s = Some(t_open.elapsed().as_secs_f64());
                reopened
            }
        };
        let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3)?;
        let mut hits = 0usize;
        let t_q = Instant::now();
        for _ in 0..a.rounds {
            for (i, (q, want)) in queries.chunks_exact(a.dims).zip(&truth).enumerate() {
                let t0 = Instant::now();
                let found = current.query("bench", q, a.k, &metas[i % a.users]).await?;
                hist.record(t0.elapsed().as_nanos().max(1) as u64)?;
                hits += found
                    .iter()
                    .filter(|(id, _)| {
                        u32::try_from(id.as_u128().wrapping_sub(1)).is_ok_and(|p| want.contains(&p))
                    })
                    .count();
            }
        }
        let query_s = t_q.elapsed().as_secs_f64();
        let timed = a.queries * a.rounds;
        let recall = hits as f64 / (timed * a.k) as f64;
        let ms = |q: f64| (hist.value_at_quantile(q) as f64 / 1e6 * 1000.0).round() / 1000.0;
        runs.push(json!({
            "ef_search": ef,
            "rerank": if quantization == Quantization::F32 { 0 } else { rerank },
            "recall_at_10": (recall * 10000.0).round() / 10000.0,
            "query_p50_ms": ms(0.5),
            "query_p99_ms": ms(0.99),
            "query_max_ms": ms(1.0),
            "queries_per_s": (timed as f64 / query_s).round(),
            "open_s": open_s.map(|s| (s * 100.0).round() / 100.0),
        }));
        index = Some(current);
    }
    let mut out = json!({
        "benchmark": "vectors",
        "n": a.n,
        "dims": a.dims,
        "queries": a.queries,
        "k": a.k,
        "quantization": a.quantization,
        "m": config.connectivity,
        "ef_construction": config.expansion_add,
        "users": a.users,
        "rounds": a.rounds,
        "build_s": (build_s * 100.0).round() / 100.0,
        "inserts_per_s": (a.n as f64 / build_s).round(),
        "checkpoint_s": (checkpoint_s * 100.0).round() / 100.0,
        "rss_mb": rss_after,
        "rss_index_mb": ((rss_after - rss_before) * 10.0).round() / 10.0,
        "rss_peak_mb": super::bench::rss_kb(std::process::id(), "VmHWM:")
            .map_or(0.0, |kb| (kb as f64 / 1024.0).round()),
        "disk_mb": disk_mb,
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "load": super::bench::load_avg(),
    });
    // The first ef's figures at the top level too, as before there could be several.
    if let (Some(first), Some(obj)) = (
        runs.first().and_then(|r| r.as_object()),
        out.as_object_mut(),
    ) {
        for (k, v) in first {
            if k != "open_s" {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    if settings.len() > 1 {
        out["runs"] = json!(runs);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} × {} ({}, {} users), M {}, ef_construction {}: build {:.1} s ({} inserts/s), checkpoint {:.1} s, RSS {} MB (peak {}), disk {} MB",
            a.n,
            a.dims,
            a.quantization,
            a.users,
            config.connectivity,
            config.expansion_add,
            build_s,
            out["inserts_per_s"],
            checkpoint_s,
            rss_after,
            out["rss_peak_mb"],
            disk_mb
        );
        for r in &runs {
            println!(
                "  ef {}{}: recall@{} {}, query p50 {} ms p99 {} ms max {} ms ({} q/s){}",
                r["ef_search"],
                match r["rerank"].as_u64() {
                    Some(n) if n > 0 => format!(", re-ranking {n}"),
                    _ => String::new(),
                },
                a.k,
                r["recall_at_10"],
                r["query_p50_ms"],
                r["query_p99_ms"],
                r["query_max_ms"],
                r["queries_per_s"],
                r["open_s"]
                    .as_f64()
                    .map(|s| format!(", opened in {s:.1} s"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Runs the memory-quality benchmark on the embedded tiers in a temporary folder, with the
/// local MiniLM embeddings of this home.
pub async fn memory(home: &crate::home::Home, a: BenchMemoryArgs) -> Result<()> {
    #[cfg(feature = "local")]
    {
        use std::sync::Arc;

        use lotus_memory::{ManagerConfig, MemoryManager, RouterEmbedder};
        use lotus_providers::{Catalog, Router, RouterConfig};

        if !lotus_local::ready(&home.models(), lotus_local::EMBED_MODEL) {
            bail!("the benchmark embeds with MiniLM: run `lotus model pull minilm` first");
        }
        let dir =
            TempDir(std::env::temp_dir().join(format!("lotus-bench-memory-{}", Uuid::now_v7())));
        let router = Arc::new(
            Router::new(Catalog::builtin(), RouterConfig::default(), None)
                .with_provider(Arc::new(lotus_local::LocalProvider::new(&home.models()))),
        );
        let embedder = Arc::new(RouterEmbedder::new(router, "local:minilm", "bench"));
        let manager = MemoryManager::new(
            lotus_memory::embedded::open(dir.path(), IndexConfig::default())?,
            embedder.clone(),
            ManagerConfig::default(),
        );
        let t_distract = Instant::now();
        if a.distractors > 0 {
            use lotus_memory::Embedder as _;
            let texts = lotus_memory::quality::distractor_sentences(a.distractors.min(2000));
            let mut sentences = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(64) {
                let vectors = embedder.embed(chunk.to_vec()).await?;
                sentences.extend(chunk.iter().cloned().zip(vectors));
            }
            let users: Vec<String> = (0..a.users).map(|u| format!("user-{u}")).collect();
            let mut done = 0;
            while done < a.distractors {
                let n = (a.distractors - done).min(50_000);
                let items = lotus_memory::quality::distractors(a.seed, &users, &sentences, done, n);
                manager.import_with_vectors(items).await?;
                done += n;
                eprintln!(
                    "{done} distractors stored ({:.0} s)",
                    t_distract.elapsed().as_secs_f64()
                );
            }
        }
        let distract_s = t_distract.elapsed().as_secs_f64();
        let scenario = lotus_memory::quality::generate(a.seed, a.users, a.chatter);
        let r = lotus_memory::quality::evaluate(&manager, &scenario).await?;
        let mut out = serde_json::to_value(&r)?;
        out["distractors"] = json!(a.distractors);
        out["distractors_ingest_s"] = json!((distract_s * 10.0).round() / 10.0);
        out["rss_mb"] = json!(rss_mb());
        out["benchmark"] = json!("memory");
        out["users"] = json!(a.users);
        out["seed"] = json!(a.seed);
        out["embedder"] = json!("local:minilm");
        out["load"] = json!(super::bench::load_avg());
        if a.json {
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!(
                "{} memories (+{} distractors), {} questions: recall@1 {:.3} @5 {:.3} @10 {:.3}, MRR {:.3}, stale {:.3}, forget leaks {}, cross-user leaks {}, {:.1} words/query, p50 {:.1} ms p95 {:.1} ms (ingest {:.1} s)",
                r.memories,
                a.distractors,
                r.questions,
                r.recall_at_1,
                r.recall_at_5,
                r.recall_at_10,
                r.mrr,
                r.stale_rate,
                r.forget_leaks,
                r.cross_user_leaks,
                r.tokens_per_query,
                r.p50_ms,
                r.p95_ms,
                r.ingest_s
            );
            for m in &r.misses {
                println!(
                    "  not in the first 10: {} asked {:?}; wanted {:?}, first came {:?}",
                    m.user, m.question, m.gold, m.got
                );
            }
        }
        Ok(())
    }
    #[cfg(not(feature = "local"))]
    {
        let _ = (home, a);
        bail!("this lotus was built without local models (feature `local`)")
    }
}
