//! Topics (`cognition.task_request`) and NATS-style patterns (`perception.*`, `system.>`).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smol_str::SmolStr;

/// Longest topic or pattern accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// Why a topic or pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The string was empty.
    #[error("a topic cannot be empty")]
    Empty,
    /// The string was longer than [`MAX_TOPIC_LEN`].
    #[error("`{0}…` is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong(String),
    /// Two dots in a row, or a leading/trailing dot.
    #[error(
        "`{0}` has an empty token: tokens are separated by single dots, e.g. `system.heartbeat`"
    )]
    EmptyToken(String),
    /// A character outside `[A-Za-z0-9_-]`.
    #[error("`{text}` has the character {ch:?}: tokens may use letters, digits, `_` and `-`")]
    BadChar {
        /// The offending text.
        text: String,
        /// The first character that is not allowed.
        ch: char,
    },
    /// A wildcard in a topic (only patterns may have them).
    #[error("`{0}` is a pattern, not a topic: `*` and `>` are only allowed in subscriptions")]
    Wildcard(String),
    /// `>` somewhere other than the last token, or mixed into a token.
    #[error(
        "`{0}`: `>` must be the last token on its own, and `*` must be a whole token (e.g. `perception.*`, `system.>`)"
    )]
    BadWildcard(String),
}

fn check_token_chars(text: &str, token: &str) -> Result<(), TopicError> {
    match token
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(ch) => Err(TopicError::BadChar {
            text: text.to_owned(),
            ch,
        }),
        None => Ok(()),
    }
}

fn check_shape(text: &str) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(text.chars().take(40).collect()));
    }
    if text.split('.').any(str::is_empty) {
        return Err(TopicError::EmptyToken(text.to_owned()));
    }
    Ok(())
}

/// A concrete, validated topic: dot-separated tokens of `[A-Za-z0-9_-]`. Cheap to clone: topics
/// up to 23 bytes are stored inline, so events crossing threads share no reference count.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(SmolStr);

impl Topic {
    /// Validates `text` as a topic.
    pub fn new(text: &str) -> Result<Self, TopicError> {
        check_shape(text)?;
        for token in text.split('.') {
            if token.contains('*') || token.contains('>') {
                return Err(TopicError::Wildcard(text.to_owned()));
            }
            check_token_chars(text, token)?;
        }
        Ok(Self(SmolStr::new(text)))
    }

    /// The topic as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic's tokens.
    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", &self.0)
    }
}

impl std::str::FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for Topic {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Topic::new(&s).map_err(serde::de::Error::custom)
    }
}

/// One token of a [`Pattern`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PatternToken {
    /// Matches exactly this token.
    Literal(Box<str>),
    /// `*`: matches exactly one token.
    Star,
    /// `>`: matches one or more trailing tokens.
    Rest,
}

/// A subscription pattern: `*` matches one token, `>` matches one or more trailing tokens.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Arc<str>,
    tokens: Arc<[PatternToken]>,
}

impl Pattern {
    /// Validates `text` as a pattern.
    pub fn new(text: &str) -> Result<Self, TopicError> {
        check_shape(text)?;
        let count = text.split('.').count();
        let mut tokens = Vec::with_capacity(count);
        for (i, token) in text.split('.').enumerate() {
            tokens.push(match token {
                "*" => PatternToken::Star,
                ">" if i + 1 == count => PatternToken::Rest,
                t if t.contains('*') || t.contains('>') => {
                    return Err(TopicError::BadWildcard(text.to_owned()));
                }
                t => {
                    check_token_chars(text, t)?;
                    PatternToken::Literal(t.into())
                }
            });
        }
        Ok(Self {
            text: Arc::from(text),
            tokens: tokens.into(),
        })
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed tokens.
    pub fn tokens(&self) -> &[PatternToken] {
        &self.tokens
    }

    /// Whether the pattern has no wildcard (it names exactly one topic).
    pub fn is_exact(&self) -> bool {
        self.tokens
            .iter()
            .all(|t| matches!(t, PatternToken::Literal(_)))
    }

    /// Whether `topic` matches this pattern.
    pub fn matches(&self, topic: &Topic) -> bool {
        self.matches_str(topic.as_str())
    }

    /// Whether the (already valid) topic text matches this pattern.
    pub fn matches_str(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for tok in self.tokens.iter() {
            match tok {
                PatternToken::Rest => return parts.next().is_some(),
                PatternToken::Star => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                PatternToken::Literal(l) => {
                    if parts.next() != Some(l) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// Whether every topic matched by `other` is also matched by `self`.
    ///
    /// Used to check that a module's handler patterns stay inside its granted subscriptions.
    pub fn covers(&self, other: &Pattern) -> bool {
        fn go(a: &[PatternToken], b: &[PatternToken]) -> bool {
            match (a.first(), b.first()) {
                (None, None) => true,
                (Some(PatternToken::Rest), Some(_)) => true,
                (None, Some(_)) | (Some(_), None) => false,
                (Some(PatternToken::Star), Some(PatternToken::Rest)) => false,
                (Some(PatternToken::Star), Some(_)) => go(&a[1..], &b[1..]),
                (Some(PatternToken::Literal(x)), Some(PatternToken::Literal(y))) => {
                    x == y && go(&a[1..], &b[1..])
                }
                (Some(PatternToken::Literal(_)), Some(_)) => false,
            }
        }
        go(&self.tokens, &other.tokens)
    }

    /// Whether some topic is matched by both patterns.
    ///
    /// A distributed bus uses it to find which durable streams a subscription must read.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        fn go(a: &[PatternToken], b: &[PatternToken]) -> bool {
            match (a.first(), b.first()) {
                (None, None) => true,
                (Some(PatternToken::Rest), Some(_)) | (Some(_), Some(PatternToken::Rest)) => true,
                (None, Some(_)) | (Some(_), None) => false,
                (Some(PatternToken::Literal(x)), Some(PatternToken::Literal(y))) => {
                    x == y && go(&a[1..], &b[1..])
                }
                (Some(_), Some(_)) => go(&a[1..], &b[1..]),
            }
        }
        go(&self.tokens, &other.tokens)
    }

    /// The pattern as a Redis `PSUBSCRIBE` glob with `prefix` in front.
    ///
    /// Both wildcards become `*`, which in a glob also spans dots: the glob matches a superset
    /// of the pattern's topics, so a receiver applies [`Pattern::matches`] to what arrives.
    /// Topic characters (letters, digits, `_`, `-`) are never special in a glob.
    pub fn to_glob(&self, prefix: &str) -> String {
        let mut out = String::with_capacity(prefix.len() + self.text.len());
        out.push_str(prefix);
        for (i, t) in self.tokens.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            match t {
                PatternToken::Literal(l) => out.push_str(l),
                PatternToken::Star | PatternToken::Rest => out.push('*'),
            }
        }
        out
    }
}

impl From<Topic> for Pattern {
    fn from(t: Topic) -> Self {
        // A valid topic is always a valid exact pattern.
        let tokens: Vec<_> = t
            .tokens()
            .map(|s| PatternToken::Literal(s.into()))
            .collect();
        Self {
            text: Arc::from(t.0.as_str()),
            tokens: tokens.into(),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({})", &self.text)
    }
}

impl std::str::FromStr for Pattern {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Pattern::new(&s).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Pattern {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Pattern".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A topic pattern: dot-separated tokens of [A-Za-z0-9_-]; `*` matches one token, `>` (last token only) matches one or more.",
            "pattern": r"^([A-Za-z0-9_-]+|\*)(\.([A-Za-z0-9_-]+|\*))*(\.>)?$|^>$",
            "maxLength": MAX_TOPIC_LEN,
        })
    }
}

impl schemars::JsonSchema for Topic {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Topic".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A topic: dot-separated tokens of [A-Za-z0-9_-].",
            "pattern": r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
            "maxLength": MAX_TOPIC_LEN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).expect("valid pattern")
    }
    fn t(s: &str) -> Topic {
        Topic::new(s).expect("valid topic")
    }

    #[test]
    fn wildcards_match_as_documented() {
        assert!(p("a.*").matches(&t("a.b")));
        assert!(!p("a.*").matches(&t("a.b.c")));
        assert!(!p("a.*").matches(&t("a")));
        assert!(p("a.>").matches(&t("a.b.c")));
        assert!(!p("a.>").matches(&t("a")));
        assert!(p(">").matches(&t("x")));
        assert!(p("*.b.>").matches(&t("a.b.c.d")));
    }

    #[test]
    fn bad_topics_and_patterns_are_rejected_with_reason() {
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert!(matches!(Topic::new("a..b"), Err(TopicError::EmptyToken(_))));
        assert!(matches!(Topic::new("a.*"), Err(TopicError::Wildcard(_))));
        assert!(matches!(
            Topic::new("a b"),
            Err(TopicError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            Pattern::new("a.>.b"),
            Err(TopicError::BadWildcard(_))
        ));
        assert!(matches!(
            Pattern::new("a.b*"),
            Err(TopicError::BadWildcard(_))
        ));
        assert!(matches!(Pattern::new(".a"), Err(TopicError::EmptyToken(_))));
    }

    #[test]
    fn covers_is_subset() {
        assert!(p("a.>").covers(&p("a.b.*")));
        assert!(p("a.*").covers(&p("a.b")));
        assert!(!p("a.*").covers(&p("a.>")));
        assert!(!p("a.b").covers(&p("a.*")));
        assert!(p(">").covers(&p("x.>")));
    }

    /// Every topic of one to four tokens over `a`, `b`, `c`.
    fn universe() -> Vec<Topic> {
        let mut out: Vec<String> = vec![String::new()];
        let mut all = Vec::new();
        for _ in 0..4 {
            out = out
                .iter()
                .flat_map(|p| {
                    ["a", "b", "c"].map(|t| {
                        if p.is_empty() {
                            t.to_owned()
                        } else {
                            format!("{p}.{t}")
                        }
                    })
                })
                .collect();
            all.extend(out.iter().map(|s| t(s)));
        }
        all
    }

    /// A Redis glob match (`*` spans any characters), enough for what [`Pattern::to_glob`] makes.
    fn glob(g: &str, s: &str) -> bool {
        match g.split_once('*') {
            None => g == s,
            Some((head, tail)) => {
                s.starts_with(head)
                    && (0..=s.len() - head.len()).any(|i| glob(tail, &s[head.len() + i..]))
            }
        }
    }

    #[test]
    fn overlaps_is_true_exactly_when_a_topic_matches_both() {
        let pats = [
            "a", "a.b", "a.*", "a.>", "*", ">", "*.b", "*.b.>", "a.*.c", "b.>", "*.*", "a.b.c.>",
            "*.*.*.*", "c.*.>",
        ]
        .map(p);
        let topics = universe();
        for x in &pats {
            for y in &pats {
                let both = topics.iter().any(|t| x.matches(t) && y.matches(t));
                assert_eq!(x.overlaps(y), both, "{x} vs {y}");
            }
        }
    }

    #[test]
    fn globs_match_every_topic_their_pattern_matches() {
        let topics = universe();
        for text in ["a", "a.*", "a.>", "*.b.>", ">", "a.*.c"] {
            let pat = p(text);
            let g = pat.to_glob("lotus:e:");
            for topic in &topics {
                if pat.matches(topic) {
                    assert!(glob(&g, &format!("lotus:e:{topic}")), "{g} misses {topic}");
                }
            }
        }
        assert_eq!(p("a.*.c").to_glob("x:"), "x:a.*.c");
        assert_eq!(p("a.>").to_glob("x:"), "x:a.*");
        // The glob over-matches; receivers filter with `matches`.
        assert!(glob(&p("a.*").to_glob(""), "a.b.c"));
    }
}
