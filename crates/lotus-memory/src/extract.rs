//! Facts in plain sentences: `my favourite editor is Helix` states the user's `favourite
//! editor`; `my favourite editor is now Zed` states it again, and supersedes the first.

use std::sync::LazyLock;

use regex::Regex;

/// What a sentence states: `subject`'s `attribute` is `value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    /// `user` for the speaker, else the name it is about, lowercase.
    pub subject: String,
    /// The property, lowercase, British spelling of `favourite`.
    pub attribute: String,
    /// The value, as written.
    pub value: String,
}

static PATTERNS: LazyLock<Vec<(Regex, Option<&'static str>)>> = LazyLock::new(|| {
    let verbs = r"(?:is|are|was|were|has become|became|has changed to|changed to)";
    let adverbs = r"(?:\s+(?:now|actually|currently|still|no longer))?";
    [
        // my favourite editor is (now) Helix
        (
            format!(r"(?i)^(?:my|our)\s+(?P<attr>[\w' -]{{1,60}}?)\s+{verbs}{adverbs}\s+(?P<value>.+)$"),
            None,
        ),
        // Alice's birthday is 3 May
        (
            format!(r"(?i)^(?P<subj>[\w][\w .-]{{0,40}}?)'s\s+(?P<attr>[\w' -]{{1,60}}?)\s+{verbs}{adverbs}\s+(?P<value>.+)$"),
            None,
        ),
        // I live in Berlin / I now work at Acme
        (
            r"(?i)^i\s+(?:now\s+|currently\s+)?live\s+in\s+(?P<value>.+)$".into(),
            Some("home city"),
        ),
        (
            r"(?i)^i\s+(?:now\s+|currently\s+)?work\s+(?:at|for)\s+(?P<value>.+)$".into(),
            Some("employer"),
        ),
        (
            r"(?i)^i(?:'m|\s+am)\s+(?:now\s+)?(?P<value>\d{1,3})\s+years?\s+old$".into(),
            Some("age"),
        ),
        (
            r"(?i)^(?:my\s+name\s+is|call\s+me)\s+(?P<value>.+)$".into(),
            Some("name"),
        ),
    ]
    .into_iter()
    .filter_map(|(re, attr)| Regex::new(&re).ok().map(|r| (r, attr)))
    .collect()
});

/// The fact `text` states, if it is a simple statement of one.
pub fn fact(text: &str) -> Option<Fact> {
    let sentence = text.trim().trim_end_matches(['.', '!', ' ']);
    if sentence.contains('?') || sentence.len() > 300 {
        return None;
    }
    for (re, fixed) in PATTERNS.iter() {
        let Some(c) = re.captures(sentence) else {
            continue;
        };
        let value = c.name("value")?.as_str().trim().to_owned();
        if value.is_empty() {
            continue;
        }
        let attribute = match fixed {
            Some(a) => (*a).to_owned(),
            None => normalize(c.name("attr")?.as_str()),
        };
        let subject = c
            .name("subj")
            .map_or_else(|| "user".to_owned(), |s| normalize(s.as_str()));
        return Some(Fact {
            subject,
            attribute,
            value,
        });
    }
    None
}

static REMEMBER: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?is)^\s*(?:(?:please|ash|hey ash)[,\s]+)*(?:remember|note|keep in mind|don't forget|do not forget)(?:\s+that)?[:,]?\s+(?P<rest>.+)$",
    )
    .ok()
});

/// What a user's message asks to keep: the sentence after "remember (that)", "note that",
/// "keep in mind"… (an explicit request), or the message itself when it states a fact ("my
/// favourite editor is Helix"). `None` for anything else (questions, chatter).
pub fn worth_keeping(text: &str) -> Option<String> {
    let text = text.trim();
    if let Some(c) = REMEMBER.as_ref().and_then(|re| re.captures(text)) {
        let rest = c.name("rest")?.as_str().trim();
        let rest = rest.trim_end_matches(['.', '!', ' ']);
        if !rest.is_empty() && !rest.contains('?') {
            return Some(rest.to_owned());
        }
    }
    fact(text).map(|_| text.trim_end_matches(['.', '!', ' ']).to_owned())
}

/// Lowercase, single spaces, one spelling of `favourite`.
pub fn normalize(s: &str) -> String {
    s.split_whitespace()
        .map(|w| {
            let w = w.to_lowercase();
            match w.as_str() {
                "favorite" => "favourite".to_owned(),
                "color" => "colour".to_owned(),
                _ => w,
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str, a: &str, v: &str) -> Option<Fact> {
        Some(Fact {
            subject: s.into(),
            attribute: a.into(),
            value: v.into(),
        })
    }

    #[test]
    fn requests_to_remember_and_stated_facts_are_kept() {
        assert_eq!(
            worth_keeping("Remember that my favourite editor is Helix.").as_deref(),
            Some("my favourite editor is Helix")
        );
        assert_eq!(
            worth_keeping("please note: the meeting moved to Friday").as_deref(),
            Some("the meeting moved to Friday")
        );
        assert_eq!(
            worth_keeping("I live in Lisbon.").as_deref(),
            Some("I live in Lisbon")
        );
        assert_eq!(worth_keeping("What is my favourite editor?"), None);
        assert_eq!(worth_keeping("remember what I said?"), None);
        assert_eq!(worth_keeping("tell me a joke"), None);
    }

    #[test]
    fn statements_of_facts_are_found() {
        assert_eq!(
            fact("my favourite editor is Helix"),
            f("user", "favourite editor", "Helix")
        );
        assert_eq!(
            fact("My favorite editor is now Zed."),
            f("user", "favourite editor", "Zed")
        );
        assert_eq!(
            fact("Alice's birthday is 3 May"),
            f("alice", "birthday", "3 May")
        );
        assert_eq!(
            fact("I now live in Lisbon"),
            f("user", "home city", "Lisbon")
        );
        assert_eq!(fact("I'm 41 years old"), f("user", "age", "41"));
        assert_eq!(fact("which editor do I like?"), None);
        assert_eq!(fact("we went hiking yesterday"), None);
    }
}
