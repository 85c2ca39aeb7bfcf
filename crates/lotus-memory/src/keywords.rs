//! Words of a text for keyword search: lowercase, alphanumeric, without stop words.

/// Words too common to say anything about what a memory is about.
const STOP: &[&str] = &[
    "a", "about", "am", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can",
    "did", "do", "does", "for", "from", "had", "has", "have", "how", "i", "if", "in", "is", "it",
    "its", "me", "my", "now", "of", "on", "or", "our", "so", "that", "the", "their", "them",
    "then", "there", "these", "they", "this", "to", "was", "we", "were", "what", "when", "where",
    "which", "who", "whom", "why", "will", "with", "you", "your",
];

/// The searchable words of `text`.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOP.contains(&w.as_str()))
        .collect()
}

/// An FTS5 query matching any of the words of `text` (each quoted, so no word is syntax), or
/// `None` when it has no searchable word.
pub fn fts_query(text: &str) -> Option<String> {
    let mut w = words(text);
    w.sort();
    w.dedup();
    if w.is_empty() {
        return None;
    }
    Some(
        w.iter()
            .map(|w| format!("\"{}\"", w.replace('"', "")))
            .collect::<Vec<_>>()
            .join(" OR "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_and_syntax_are_dropped() {
        assert_eq!(words("Which editor do I like?"), ["editor", "like"]);
        assert_eq!(
            fts_query("AND \"OR\" NEAR(x) editor*").as_deref(),
            Some("\"editor\" OR \"near\" OR \"x\"")
        );
        assert_eq!(fts_query("is it?"), None);
    }
}
