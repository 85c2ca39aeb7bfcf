//! L1 and L2 on Redis: working memory as lists and keys with a TTL, the short-term stream as
//! one Redis Stream per user. Keys live under a prefix (`lotus:mem:` by default).

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde_json::Value;
use uuid::Uuid;

use crate::tiers::{
    MemoryError, RECENT_CAP, Result, ShortTerm, StreamRecord, Working, WorkingItem,
};

fn err(tier: &'static str) -> impl Fn(redis::RedisError) -> MemoryError {
    move |e| MemoryError::backend(tier, "redis", e)
}

/// Connects to `url` (`redis://host:port/db`), with a clear error when nothing answers.
async fn connect(url: &str, tier: &'static str) -> Result<ConnectionManager> {
    let client = redis::Client::open(url).map_err(|e| {
        MemoryError::BadInput(format!(
            "`{url}` is not a Redis URL ({e}); use redis://HOST:PORT"
        ))
    })?;
    let mut conn = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
        .await
        .map_err(|_| {
            MemoryError::backend(tier, "redis", format!("{url} did not answer within 5 s"))
        })?
        .map_err(|e| {
            MemoryError::backend(tier, "redis", format!("cannot connect to {url}: {e}"))
        })?;
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(err(tier))?;
    Ok(conn)
}

/// The sum of `cmd` (`LLEN`, `XLEN`) over the key `key(user)` of every user in the set
/// `users_key`, in one pipelined round trip.
async fn sum_per_user(
    conn: &ConnectionManager,
    users_key: &str,
    tier: &'static str,
    cmd: &str,
    key: impl Fn(&str) -> String,
) -> Result<u64> {
    let mut conn = conn.clone();
    let users: Vec<String> = conn.smembers(users_key).await.map_err(err(tier))?;
    if users.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for u in &users {
        pipe.cmd(cmd).arg(key(u));
    }
    let lens: Vec<u64> = pipe.query_async(&mut conn).await.map_err(err(tier))?;
    Ok(lens.iter().sum())
}

/// Working memory in Redis: `PREFIX{user}:recent` (a list, newest first, capped), keys
/// `PREFIX{user}:kv:{key}` with a TTL, and the set of users `PREFIX users`.
#[derive(Clone)]
pub struct RedisWorking {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisWorking {
    /// Connects to `url`, keeping keys under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        Ok(Self {
            conn: connect(url, "working").await?,
            prefix: prefix.to_owned(),
        })
    }

    fn recent_key(&self, user: &str) -> String {
        format!("{}{user}:recent", self.prefix)
    }

    fn kv_key(&self, user: &str, key: &str) -> String {
        format!("{}{user}:kv:{key}", self.prefix)
    }

    fn users_key(&self) -> String {
        format!("{}users", self.prefix)
    }
}

fn encode(item: &WorkingItem) -> Result<String> {
    serde_json::to_string(item).map_err(|e| MemoryError::backend("working", "redis", e))
}

fn decode(s: &str) -> Option<WorkingItem> {
    serde_json::from_str(s).ok()
}

#[async_trait]
impl Working for RedisWorking {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn push(&self, user: &str, item: &WorkingItem) -> Result<()> {
        let key = self.recent_key(user);
        let cap = isize::try_from(RECENT_CAP).unwrap_or(100) - 1;
        let _: () = redis::pipe()
            .atomic()
            .lpush(&key, encode(item)?)
            .ltrim(&key, 0, cap)
            .sadd(self.users_key(), user)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err("working"))?;
        Ok(())
    }

    async fn recent(&self, user: &str, n: usize) -> Result<Vec<WorkingItem>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let stop = isize::try_from(n).unwrap_or(isize::MAX) - 1;
        let items: Vec<String> = self
            .conn
            .clone()
            .lrange(self.recent_key(user), 0, stop)
            .await
            .map_err(err("working"))?;
        Ok(items.iter().filter_map(|s| decode(s)).collect())
    }

    async fn set(&self, user: &str, key: &str, value: &Value, ttl: Duration) -> Result<()> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let _: () = redis::pipe()
            .pset_ex(self.kv_key(user, key), value.to_string(), ms)
            .ignore()
            .sadd(self.users_key(), user)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err("working"))?;
        Ok(())
    }

    async fn get(&self, user: &str, key: &str) -> Result<Option<Value>> {
        let v: Option<String> = self
            .conn
            .clone()
            .get(self.kv_key(user, key))
            .await
            .map_err(err("working"))?;
        Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
    }

    async fn take_older(&self, before_us: i64) -> Result<Vec<(String, WorkingItem)>> {
        let mut conn = self.conn.clone();
        let users: Vec<String> = conn
            .smembers(self.users_key())
            .await
            .map_err(err("working"))?;
        let mut out = Vec::new();
        for user in users {
            let key = self.recent_key(&user);
            // Newest first: the old ones are the tail.
            let all: Vec<String> = conn.lrange(&key, 0, -1).await.map_err(err("working"))?;
            let old = all
                .iter()
                .rev()
                .take_while(|s| decode(s).is_none_or(|i| i.at_us < before_us))
                .count();
            if old == 0 {
                continue;
            }
            let popped: Vec<String> = redis::cmd("RPOP")
                .arg(&key)
                .arg(old)
                .query_async(&mut conn)
                .await
                .map_err(err("working"))?;
            out.extend(
                popped
                    .iter()
                    .filter_map(|s| decode(s))
                    .map(|i| (user.clone(), i)),
            );
        }
        out.sort_by_key(|(_, i)| i.at_us);
        Ok(out)
    }

    async fn forget(&self, user: &str, memory_ids: &[Uuid]) -> Result<u64> {
        let mut conn = self.conn.clone();
        let key = self.recent_key(user);
        let all: Vec<String> = conn.lrange(&key, 0, -1).await.map_err(err("working"))?;
        let mut n = 0u64;
        for s in all {
            if decode(&s).is_some_and(|i| i.memory_id.is_some_and(|m| memory_ids.contains(&m))) {
                let removed: u64 = conn.lrem(&key, 0, &s).await.map_err(err("working"))?;
                n += removed;
            }
        }
        Ok(n)
    }

    async fn clear_user(&self, user: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}{user}:kv:*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        {
            let mut it: redis::AsyncIter<'_, String> =
                conn.scan_match(&pattern).await.map_err(err("working"))?;
            while let Some(k) = it.next_item().await {
                keys.push(k.map_err(err("working"))?);
            }
        }
        let recent: u64 = conn
            .llen(self.recent_key(user))
            .await
            .map_err(err("working"))?;
        keys.push(self.recent_key(user));
        let _: () = conn.del(&keys).await.map_err(err("working"))?;
        let _: () = conn
            .srem(self.users_key(), user)
            .await
            .map_err(err("working"))?;
        Ok(recent + keys.len() as u64 - 1)
    }

    async fn count(&self) -> Result<u64> {
        sum_per_user(&self.conn, &self.users_key(), "working", "LLEN", |u| {
            self.recent_key(u)
        })
        .await
    }
}

/// The short-term stream in Redis Streams: `PREFIX st:{user}` per user (appended with
/// `XADD`, trimmed with `XDEL`), and the set of users `PREFIX st-users`.
#[derive(Clone)]
pub struct RedisShortTerm {
    conn: ConnectionManager,
    prefix: String,
}

type Entries = Vec<(String, Vec<(String, String)>)>;

impl RedisShortTerm {
    /// Connects to `url`, keeping keys under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        Ok(Self {
            conn: connect(url, "short-term").await?,
            prefix: prefix.to_owned(),
        })
    }

    fn stream(&self, user: &str) -> String {
        format!("{}st:{user}", self.prefix)
    }

    fn users_key(&self) -> String {
        format!("{}st-users", self.prefix)
    }

    /// Every entry of `user`'s stream, in order (read in pages).
    async fn entries(&self, user: &str) -> Result<Vec<(String, StreamRecord)>> {
        let mut conn = self.conn.clone();
        let key = self.stream(user);
        let mut out = Vec::new();
        let mut start = "-".to_owned();
        loop {
            let page: Entries = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(err("short-term"))?;
            let n = page.len();
            let last = page.last().map(|(id, _)| id.clone());
            for (id, fields) in page {
                if let Some(r) = record(user, &fields) {
                    out.push((id, r));
                }
            }
            match last {
                Some(id) if n == 1000 => start = format!("({id}"),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn delete_ids(&self, user: &str, ids: &[String]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        let mut n = 0u64;
        for chunk in ids.chunks(500) {
            let d: u64 = conn
                .xdel(self.stream(user), chunk)
                .await
                .map_err(err("short-term"))?;
            n += d;
        }
        Ok(n)
    }
}

fn record(user: &str, fields: &[(String, String)]) -> Option<StreamRecord> {
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    Some(StreamRecord {
        id: Uuid::parse_str(get("id")?).ok()?,
        user: user.to_owned(),
        memory_id: get("memory_id")
            .filter(|s| !s.is_empty())
            .and_then(|s| Uuid::parse_str(s).ok()),
        op: get("op")?.to_owned(),
        text: get("text")?.to_owned(),
        at_us: get("at_us")?.parse().ok()?,
    })
}

#[async_trait]
impl ShortTerm for RedisShortTerm {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn append(&self, r: &StreamRecord) -> Result<()> {
        let memory = r.memory_id.map(|m| m.to_string()).unwrap_or_default();
        let _: () = redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(self.stream(&r.user))
            .arg("*")
            .arg("id")
            .arg(r.id.to_string())
            .arg("memory_id")
            .arg(memory)
            .arg("op")
            .arg(&r.op)
            .arg("text")
            .arg(&r.text)
            .arg("at_us")
            .arg(r.at_us)
            .ignore()
            .sadd(self.users_key(), &r.user)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(err("short-term"))?;
        Ok(())
    }

    async fn range(&self, user: &str, since_us: i64, limit: usize) -> Result<Vec<StreamRecord>> {
        Ok(self
            .entries(user)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.at_us >= since_us)
            .take(limit)
            .collect())
    }

    async fn forget(&self, user: &str, memory_ids: &[Uuid]) -> Result<u64> {
        let ids: Vec<String> = self
            .entries(user)
            .await?
            .into_iter()
            .filter(|(_, r)| r.memory_id.is_some_and(|m| memory_ids.contains(&m)))
            .map(|(id, _)| id)
            .collect();
        self.delete_ids(user, &ids).await
    }

    async fn clear_user(&self, user: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let n: u64 = conn
            .xlen(self.stream(user))
            .await
            .map_err(err("short-term"))?;
        let _: () = conn
            .del(self.stream(user))
            .await
            .map_err(err("short-term"))?;
        let _: () = conn
            .srem(self.users_key(), user)
            .await
            .map_err(err("short-term"))?;
        Ok(n)
    }

    async fn trim(&self, before_us: i64) -> Result<u64> {
        let users: Vec<String> = self
            .conn
            .clone()
            .smembers(self.users_key())
            .await
            .map_err(err("short-term"))?;
        let mut n = 0;
        for user in users {
            let ids: Vec<String> = self
                .entries(&user)
                .await?
                .into_iter()
                .filter(|(_, r)| r.at_us < before_us)
                .map(|(id, _)| id)
                .collect();
            n += self.delete_ids(&user, &ids).await?;
        }
        Ok(n)
    }

    async fn count(&self) -> Result<u64> {
        sum_per_user(&self.conn, &self.users_key(), "short-term", "XLEN", |u| {
            self.stream(u)
        })
        .await
    }
}
