#!/usr/bin/env python3
"""Runs the data of `lotus bench vectors --export DIR` through hnswlib, faiss-cpu and chromadb
with the same graph parameters (M=16, ef_construction=128, ef=64), one query at a time, and
prints their figures and LOTUS's ratios to them.

    python3 -m venv /tmp/ann && /tmp/ann/bin/pip install numpy hnswlib faiss-cpu chromadb
    lotus bench vectors --n 100000 --export /tmp/ann-data --json > /tmp/lotus.json
    /tmp/ann/bin/python bench/compare_ann.py /tmp/ann-data /tmp/lotus.json

A library that is not installed is skipped (and said so); `--only=hnswlib,faiss` runs only those.
"""
import json
import shutil
import sys
import tempfile
import time

import numpy as np


def load(d):
    meta = json.load(open(f"{d}/meta.json"))
    n, dims, nq, k = meta["n"], meta["dims"], meta["queries"], meta["k"]
    base = np.fromfile(f"{d}/base.f32", dtype="<f4").reshape(n, dims)
    queries = np.fromfile(f"{d}/queries.f32", dtype="<f4").reshape(nq, dims)
    truth = np.fromfile(f"{d}/truth.u32", dtype="<u4").reshape(nq, k)
    return base, queries, truth, k


def measure(name, build, search, base, queries, truth, k):
    t0 = time.perf_counter()
    index = build(base)
    build_s = time.perf_counter() - t0
    lat, hits = [], 0
    t1 = time.perf_counter()
    for q, want in zip(queries, truth):
        s = time.perf_counter()
        got = search(index, q, k)
        lat.append(time.perf_counter() - s)
        hits += len(set(int(g) for g in got) & set(int(w) for w in want))
    total = time.perf_counter() - t1
    lat.sort()
    r = {
        "name": name,
        "recall_at_10": round(hits / (len(queries) * k), 4),
        "query_p50_ms": round(lat[len(lat) // 2] * 1000, 3),
        "query_p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 3),
        "queries_per_s": round(len(queries) / total),
        "build_s": round(build_s, 2),
    }
    print(json.dumps(r))
    return r


def hnswlib_run(base, queries, truth, k):
    import hnswlib

    def build(b):
        i = hnswlib.Index(space="cosine", dim=b.shape[1])
        i.init_index(max_elements=len(b), M=16, ef_construction=128)
        i.add_items(b, np.arange(len(b)))
        i.set_ef(64)
        i.set_num_threads(1)
        return i

    return measure("hnswlib", build, lambda i, q, k: i.knn_query(q, k=k)[0][0], base, queries, truth, k)


def faiss_run(base, queries, truth, k):
    import faiss

    def build(b):
        i = faiss.IndexHNSWFlat(b.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
        i.hnsw.efConstruction = 128
        i.add(b)
        i.hnsw.efSearch = 64
        faiss.omp_set_num_threads(1)
        return i

    return measure("faiss", build, lambda i, q, k: i.search(q.reshape(1, -1), k)[1][0], base, queries, truth, k)


def chroma_run(base, queries, truth, k):
    import chromadb

    path = tempfile.mkdtemp(prefix="chroma-bench-")

    def build(b):
        client = chromadb.PersistentClient(path=path)
        c = client.create_collection(
            "bench",
            configuration={"hnsw": {"space": "cosine", "max_neighbors": 16, "ef_construction": 128, "ef_search": 64}},
        )
        step = 5000
        for s in range(0, len(b), step):
            c.add(ids=[str(i) for i in range(s, min(s + step, len(b)))], embeddings=b[s : s + step].tolist())
        return c

    try:
        return measure(
            "chromadb",
            build,
            lambda c, q, k: [int(x) for x in c.query(query_embeddings=[q.tolist()], n_results=k, include=[])["ids"][0]],
            base,
            queries,
            truth,
            k,
        )
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--only=")]
    only = [a.split("=", 1)[1].split(",") for a in sys.argv[1:] if a.startswith("--only=")]
    if not args:
        sys.exit(__doc__)
    base, queries, truth, k = load(args[0])
    lotus = json.load(open(args[1])) if len(args) > 1 else None
    results = {}
    for name, run in [("hnswlib", hnswlib_run), ("faiss", faiss_run), ("chromadb", chroma_run)]:
        if only and name not in only[0]:
            continue
        try:
            results[name] = run(base, queries, truth, k)
        except ImportError as e:
            print(f"skipping {name}: {e}", file=sys.stderr)
    if lotus:
        for name, r in results.items():
            print(
                f"LOTUS vs {name}: queries/s {lotus['queries_per_s'] / r['queries_per_s']:.2f}x, "
                f"p99 {r['query_p99_ms'] / max(lotus['query_p99_ms'], 1e-9):.2f}x lower, "
                f"recall {lotus['recall_at_10']:.4f} vs {r['recall_at_10']:.4f}, "
                f"build {r['build_s'] / max(lotus['build_s'], 1e-9):.2f}x faster"
            )


if __name__ == "__main__":
    main()
