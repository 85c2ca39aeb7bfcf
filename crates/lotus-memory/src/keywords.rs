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

/// The prefix that scopes a word to `user` in the keyword index: `u`, eight hex digits of a
/// checksum of the user, `x`. One token with the word, so the index holds each user's words
/// apart: a search reads and scores only the asking user's memories, and term statistics are
/// the user's own.
fn user_prefix(user: &str) -> String {
    format!("u{:08x}x", crc32fast::hash(user.as_bytes()))
}

/// The indexed form of `text` for `user`: its searchable words, each scoped to the user.
pub fn user_keys(user: &str, text: &str) -> String {
    let prefix = user_prefix(user);
    words(text)
        .iter()
        .map(|w| format!("{prefix}{w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The FTS5 terms for `user`'s memories holding the words of `text`: each word once, scoped
/// to the user and quoted, so no word is syntax.
pub fn fts_terms(user: &str, text: &str) -> Vec<String> {
    let mut w = words(text);
    w.sort();
    w.dedup();
    let prefix = user_prefix(user);
    w.iter()
        .map(|w| format!("\"{prefix}{}\"", w.replace('"', "")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_and_syntax_are_dropped() {
        assert_eq!(words("Which editor do I like?"), ["editor", "like"]);
        let p = user_prefix("ana");
        assert_eq!(
            fts_terms("ana", "AND \"OR\" NEAR(x) editor* editor"),
            [
                format!("\"{p}editor\""),
                format!("\"{p}near\""),
                format!("\"{p}x\"")
            ]
        );
        assert!(fts_terms("ana", "is it?").is_empty());
        assert_eq!(
            user_keys("ana", "My editor is Helix"),
            format!("{p}editor {p}helix")
        );
        assert_ne!(user_prefix("ana"), user_prefix("bo"));
    }
}
