//! Property tests: pattern matching and `covers` agree with a naive reference.

use lotus_core::{Pattern, Topic};
use proptest::prelude::*;

const TOKENS: &[&str] = &["a", "b", "c"];

fn topic() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(prop::sample::select(TOKENS), 1..5)
}

fn pattern() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(&["a", "b", "c", "*"][..]), 0..4),
        any::<bool>(),
    )
        .prop_filter_map("non-empty", |(toks, rest)| {
            let mut t: Vec<&str> = toks;
            if rest {
                t.push(">");
            }
            (!t.is_empty()).then(|| t.join("."))
        })
}

/// The reference: recursive matching straight from the definition.
fn naive(pat: &[&str], topic: &[&str]) -> bool {
    match (pat.first(), topic.first()) {
        (None, None) => true,
        (Some(&">"), Some(_)) => pat.len() == 1,
        (Some(&"*"), Some(_)) => naive(&pat[1..], &topic[1..]),
        (Some(p), Some(t)) => p == t && naive(&pat[1..], &topic[1..]),
        _ => false,
    }
}

/// Every topic of up to 5 tokens over the alphabet.
fn universe() -> Vec<String> {
    let mut all = vec![];
    let mut layer: Vec<String> = TOKENS.iter().map(|s| s.to_string()).collect();
    for _ in 0..5 {
        all.extend(layer.iter().cloned());
        layer = layer
            .iter()
            .flat_map(|p| TOKENS.iter().map(move |t| format!("{p}.{t}")))
            .collect();
    }
    all
}

proptest! {
    #[test]
    fn matches_agrees_with_reference(p in pattern(), t in topic()) {
        let pat = Pattern::new(&p).expect("generated pattern is valid");
        let top = Topic::new(&t.join(".")).expect("generated topic is valid");
        let ptoks: Vec<&str> = p.split('.').collect();
        prop_assert_eq!(pat.matches(&top), naive(&ptoks, &t));
    }

    #[test]
    fn covers_is_exactly_subset_over_the_universe(a in pattern(), b in pattern()) {
        let pa = Pattern::new(&a).expect("valid");
        let pb = Pattern::new(&b).expect("valid");
        let subset = universe().iter().all(|t| !pb.matches_str(t) || pa.matches_str(t));
        // Topics longer than the universe's 5 tokens can only matter for `>`; a pattern of at
        // most 4 tokens plus `>` is decided within 5 tokens, so the universe is exhaustive.
        prop_assert_eq!(pa.covers(&pb), subset, "a={} b={}", a, b);
    }

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,40}") {
        let _ = Pattern::new(&s);
        let _ = Topic::new(&s);
    }
}
