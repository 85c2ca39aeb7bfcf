//! What memory holds: [`Memory`] records, what a caller gives to remember, asks to recall and
//! asks to forget.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// What kind of memory a record is; each kind lives in its own long-term collection.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Something that happened (a conversation turn, an event): `memories_episodic`.
    Episodic,
    /// A fact about the user or the world: `memories_semantic`.
    #[default]
    Fact,
    /// A liking or a way of working: `user_preferences`.
    Preference,
    /// A code pattern: `code_patterns`.
    Code,
    /// A summary of a finished conversation: `conversation_summaries`.
    Summary,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Episodic,
        Kind::Fact,
        Kind::Preference,
        Kind::Code,
        Kind::Summary,
    ];

    /// The long-term (vector) collection of this kind.
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Episodic => "memories_episodic",
            Kind::Fact => "memories_semantic",
            Kind::Preference => "user_preferences",
            Kind::Code => "code_patterns",
            Kind::Summary => "conversation_summaries",
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Episodic => "episodic",
            Kind::Fact => "fact",
            Kind::Preference => "preference",
            Kind::Code => "code",
            Kind::Summary => "summary",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown memory kind `{s}`: use episodic, fact, preference, code or summary"
                )
            })
    }
}

/// One remembered thing, as the persistent tier keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Its id (a UUIDv7: ordered by creation).
    pub id: Uuid,
    /// Whose memory it is. Nothing of one user reaches another's recall.
    pub user: String,
    /// Its kind.
    pub kind: Kind,
    /// The text.
    pub text: String,
    /// What the fact is about (`user`, a person, a project), when it is a fact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Which property of the subject it states (`favourite editor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    /// The value it states (`Helix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// 0 (trivia) to 1 (vital).
    pub importance: f32,
    /// When it was remembered (µs since the Unix epoch).
    pub created_us: i64,
    /// Since when it holds.
    pub valid_from_us: i64,
    /// Until when it held: set when a newer fact superseded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_to_us: Option<i64>,
    /// The memory that superseded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<Uuid>,
    /// Who stored it (`cli`, a module's name, `consolidation`).
    pub source: String,
    /// Free-form metadata (strings, numbers, booleans), filterable in recall.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, Value>,
}

impl Memory {
    /// Whether it still holds.
    pub fn is_current(&self) -> bool {
        self.valid_to_us.is_none()
    }
}

/// What to remember.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMemory {
    /// Whose memory.
    pub user: String,
    /// The text.
    pub text: String,
    /// The kind (default `fact`).
    #[serde(default)]
    pub kind: Kind,
    /// 0 to 1 (default 0.5).
    #[serde(default)]
    pub importance: Option<f32>,
    /// What it is about; found in the text when not given (`my X is Y` → `user`, `X`).
    #[serde(default)]
    pub subject: Option<String>,
    /// Which property it states.
    #[serde(default)]
    pub attribute: Option<String>,
    /// Who stores it.
    #[serde(default)]
    pub source: Option<String>,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
}

/// What `remember` did.
#[derive(Clone, Debug, Serialize)]
pub struct Remembered {
    /// The stored memory (or the identical one that already existed).
    pub memory: Memory,
    /// Whether an identical current memory already existed (nothing new was stored).
    pub duplicate: bool,
    /// The memories it superseded.
    pub superseded: Vec<Memory>,
}

/// What to recall.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecallQuery {
    /// Whose memories.
    pub user: String,
    /// The question or keywords.
    pub query: String,
    /// How many hits (default 5).
    #[serde(default = "default_k")]
    pub k: usize,
    /// Only these kinds (default: all).
    #[serde(default)]
    pub kinds: Vec<Kind>,
    /// Only memories whose metadata has these values.
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
    /// Superseded facts are hits too (marked), not only history of current ones.
    #[serde(default)]
    pub include_superseded: bool,
}

fn default_k() -> usize {
    5
}

impl RecallQuery {
    /// A query for `user` with the defaults.
    pub fn new(user: impl Into<String>, query: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            query: query.into(),
            k: default_k(),
            kinds: Vec::new(),
            metadata: BTreeMap::new(),
            include_superseded: false,
        }
    }
}

/// One recalled memory, with how it was found.
#[derive(Clone, Debug, Serialize)]
pub struct Hit {
    /// The memory.
    pub memory: Memory,
    /// The final score (higher is better).
    pub score: f32,
    /// Its rank among keyword matches (1-based), if it matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyword_rank: Option<usize>,
    /// Its rank among vector matches (1-based), if it matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector_rank: Option<usize>,
    /// Its cosine similarity to the query, if it was a vector match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
    /// Earlier values of the same fact, newest first (each superseded).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Memory>,
    /// Found through this hit (a second hop: it shares that memory's words, not the query's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Uuid>,
}

/// What to forget: memories by id, or every memory of a user matching the rest.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetFilter {
    /// Whose memories (required).
    pub user: String,
    /// These memories (and the earlier values of the same facts).
    #[serde(default)]
    pub ids: Vec<Uuid>,
    /// Of this kind.
    #[serde(default)]
    pub kind: Option<Kind>,
    /// About this subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// This attribute.
    #[serde(default)]
    pub attribute: Option<String>,
    /// Every memory of the user (needs nothing else set).
    #[serde(default)]
    pub all: bool,
}

/// Counts, for `lotus memory stats`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Memories in the persistent tier, current and superseded.
    pub memories: u64,
    /// Of which superseded.
    pub superseded: u64,
    /// Distinct users.
    pub users: u64,
    /// Vectors per long-term collection.
    pub vectors: BTreeMap<String, u64>,
    /// Records in the short-term stream.
    pub short_term: u64,
    /// Items in working memory.
    pub working: u64,
    /// The backend of each tier.
    pub backends: BTreeMap<String, String>,
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
