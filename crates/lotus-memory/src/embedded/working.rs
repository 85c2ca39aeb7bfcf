//! L1 in the process: per user, a ring of recent interactions and keys with a deadline.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::Value;
use uuid::Uuid;

use crate::tiers::{RECENT_CAP, Result, Working, WorkingItem};

#[derive(Default)]
struct UserWorking {
    recent: VecDeque<WorkingItem>,
    keys: HashMap<String, (Value, Instant)>,
}

/// Working memory in this process (lost on exit, as working memory may be).
#[derive(Default)]
pub struct InProcessWorking {
    users: Mutex<HashMap<String, UserWorking>>,
}

impl InProcessWorking {
    /// An empty working memory.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Working for InProcessWorking {
    fn backend(&self) -> &'static str {
        "in-process"
    }

    async fn push(&self, user: &str, item: &WorkingItem) -> Result<()> {
        let mut users = self.users.lock();
        let u = users.entry(user.to_owned()).or_default();
        u.recent.push_front(item.clone());
        u.recent.truncate(RECENT_CAP);
        Ok(())
    }

    async fn recent(&self, user: &str, n: usize) -> Result<Vec<WorkingItem>> {
        Ok(self
            .users
            .lock()
            .get(user)
            .map(|u| u.recent.iter().take(n).cloned().collect())
            .unwrap_or_default())
    }

    async fn set(&self, user: &str, key: &str, value: &Value, ttl: Duration) -> Result<()> {
        let deadline = Instant::now() + ttl;
        self.users
            .lock()
            .entry(user.to_owned())
            .or_default()
            .keys
            .insert(key.to_owned(), (value.clone(), deadline));
        Ok(())
    }

    async fn get(&self, user: &str, key: &str) -> Result<Option<Value>> {
        let mut users = self.users.lock();
        let Some(u) = users.get_mut(user) else {
            return Ok(None);
        };
        match u.keys.get(key) {
            Some((v, deadline)) if *deadline > Instant::now() => Ok(Some(v.clone())),
            Some(_) => {
                u.keys.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn take_older(&self, before_us: i64) -> Result<Vec<(String, WorkingItem)>> {
        let mut out = Vec::new();
        for (user, u) in self.users.lock().iter_mut() {
            // Newest first: the old ones are at the back.
            while u.recent.back().is_some_and(|i| i.at_us < before_us) {
                if let Some(i) = u.recent.pop_back() {
                    out.push((user.clone(), i));
                }
            }
        }
        out.sort_by_key(|(_, i)| i.at_us);
        Ok(out)
    }

    async fn forget(&self, user: &str, memory_ids: &[Uuid]) -> Result<u64> {
        let mut users = self.users.lock();
        let Some(u) = users.get_mut(user) else {
            return Ok(0);
        };
        let before = u.recent.len();
        u.recent
            .retain(|i| !i.memory_id.is_some_and(|m| memory_ids.contains(&m)));
        Ok((before - u.recent.len()) as u64)
    }

    async fn clear_user(&self, user: &str) -> Result<u64> {
        Ok(self
            .users
            .lock()
            .remove(user)
            .map_or(0, |u| (u.recent.len() + u.keys.len()) as u64))
    }

    async fn count(&self) -> Result<u64> {
        Ok(self
            .users
            .lock()
            .values()
            .map(|u| u.recent.len() as u64)
            .sum())
    }
}
