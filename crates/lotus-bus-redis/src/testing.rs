//! Helpers for tests against a real Redis (feature `test-support`), shared by the tests of
//! every crate that runs nuclei on a Redis bus.

use std::time::Duration;

/// The Redis to test against (`LOTUS_TEST_REDIS`, default 127.0.0.1:6379), or `None` when
/// there is none. In CI (`CI` set) a missing Redis fails the test instead.
pub async fn redis_url() -> Option<String> {
    let url =
        std::env::var("LOTUS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    match crate::ping(&url, Duration::from_secs(3)).await {
        Ok(()) => Some(url),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs Redis (set LOTUS_TEST_REDIS): {e}"
            );
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// A namespace of its own for one test.
pub fn namespace() -> String {
    format!("lotus-test-{}", uuid::Uuid::now_v7().simple())
}

async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("a connection to the test Redis")
}

/// Removes every key of a test's namespace (streams, marks, reports).
pub async fn drop_namespace(url: &str, ns: &str) {
    let mut c = connection(url).await;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{ns}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut c)
                .await
                .expect("UNLINK");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// Cuts every connection to the Redis at `url` but the one asking (`CLIENT KILL`); returns
/// how many were cut. Use it in a test binary of its own: it cuts every client.
pub async fn kill_clients(url: &str) -> usize {
    let mut c = connection(url).await;
    let mut killed = 0;
    for kind in ["normal", "pubsub"] {
        let n: usize = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut c)
            .await
            .expect("CLIENT KILL");
        killed += n;
    }
    killed
}

/// Cuts every client ([`kill_clients`]) `rounds` times, `every` apart, in a task of its own;
/// the task returns how many were cut each time.
pub fn cut_repeatedly(
    url: String,
    rounds: usize,
    every: Duration,
) -> tokio::task::JoinHandle<Vec<usize>> {
    tokio::spawn(async move {
        let mut kills = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            tokio::time::sleep(every).await;
            kills.push(kill_clients(&url).await);
        }
        kills
    })
}
