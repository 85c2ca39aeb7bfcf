//! SmolLM2 on the CPU: GGUF weights (re-quantized once to Q8_0, which candle runs with SIMD
//! kernels), the tokenizer and chat template from the GGUF metadata, streamed sampling.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};
use lotus_providers::{ChatEvent, ChatRequest, ErrorKind, ProviderError, Role, StopReason, Usage};
use tokenizers::Tokenizer;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;

/// Re-quantizes the 2-D Q4_1 weights of `src` to Q8_0 into `dst` (through a temporary file),
/// calling `progress(done, total)` per tensor.
pub fn requantize(src: &Path, dst: &Path, progress: &dyn Fn(usize, usize)) -> Result<(), String> {
    let fail = |e: candle_core::Error| format!("re-quantizing {}: {e}", src.display());
    let mut r =
        BufReader::new(File::open(src).map_err(|e| format!("cannot read {}: {e}", src.display()))?);
    let ct = gguf_file::Content::read(&mut r).map_err(fail)?;
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let qt = ct.tensor(&mut r, name, &Device::Cpu).map_err(fail)?;
        let block = GgmlDType::Q8_0.block_size();
        let convert =
            qt.dtype() == GgmlDType::Q4_1 && qt.rank() == 2 && qt.shape().dims()[1] % block == 0;
        let qt = if convert {
            QTensor::quantize(&qt.dequantize(&Device::Cpu).map_err(fail)?, GgmlDType::Q8_0)
                .map_err(fail)?
        } else {
            qt
        };
        tensors.push(((*name).clone(), qt));
        progress(i + 1, names.len());
    }
    let mut metadata: Vec<(&str, &Value)> = ct
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.alignment" && k.as_str() != "general.file_type")
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let q8 = Value::U32(7); // MOSTLY_Q8_0
    metadata.push(("general.file_type", &q8));
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let tmp = dst.with_extension("tmp");
    let mut w = BufWriter::new(
        File::create(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?,
    );
    gguf_file::write(&mut w, &metadata, &refs).map_err(fail)?;
    w.flush().map_err(|e| e.to_string())?;
    drop(w);
    std::fs::rename(&tmp, dst).map_err(|e| format!("cannot write {}: {e}", dst.display()))
}

/// A failure of the model itself (not of the request).
pub fn failed(message: String) -> ProviderError {
    ProviderError::new("local", ErrorKind::Server { retry_after: None }, message)
}

/// The system prompt used when a request has none.
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// A loaded chat model.
pub struct Chat {
    model: ModelWeights,
    tokenizer: Tokenizer,
    /// The model's chat template, parsed once (`chat`), when it has one that parses.
    templates: Option<minijinja::Environment<'static>>,
    stops: Vec<u32>,
    device: Device,
}

fn meta_string(ct: &gguf_file::Content, key: &str) -> Option<String> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
}

impl Chat {
    /// Loads a GGUF chat model.
    pub fn load(path: &Path) -> Result<Self, String> {
        let fail = |e: candle_core::Error| format!("loading {}: {e}", path.display());
        let mut r = BufReader::new(
            File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        );
        let ct = gguf_file::Content::read(&mut r).map_err(fail)?;
        let mut tokenizer = Tokenizer::from_gguf(&ct).map_err(fail)?;
        if meta_string(&ct, "tokenizer.ggml.pre").as_deref() == Some("smollm") {
            // candle's default pipeline adds a prefix space and keeps digit runs together; SmolLM2
            // splits every digit and adds no prefix space.
            tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
            ]))));
        }
        let templates = meta_string(&ct, "tokenizer.chat_template").and_then(|t| {
            let mut env = minijinja::Environment::new();
            match env.add_template_owned("chat", t) {
                Ok(()) => Some(env),
                Err(e) => {
                    tracing::warn!(error = %e, "the model's chat template does not parse; using ChatML");
                    None
                }
            }
        });
        let mut stops: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect();
        if let Some(eos) = ct
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok())
        {
            stops.push(eos);
        }
        let device = Device::Cpu;
        let model = ModelWeights::from_gguf(ct, &mut r, &device).map_err(fail)?;
        Ok(Self {
            model,
            tokenizer,
            templates,
            stops,
            device,
        })
    }

    /// The prompt for `req`: the model's own chat template, or ChatML when it has none that
    /// renders.
    pub fn prompt(&self, req: &ChatRequest) -> String {
        // SmolLM2's template falls back to a system prompt ("…named SmolLM…") under which the
        // 135M model often drifts into French; a plain one keeps it on task.
        let default_system = (!req.messages.iter().any(|m| m.role == Role::System))
            .then(|| serde_json::json!({"role": "system", "content": DEFAULT_SYSTEM}));
        let messages: Vec<serde_json::Value> = default_system
            .into_iter()
            .chain(req.messages.iter().map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User | Role::Tool => "user",
                    Role::Assistant => "assistant",
                };
                serde_json::json!({"role": role, "content": m.text()})
            }))
            .collect();
        if let Some(env) = &self.templates {
            if let Ok(tpl) = env.get_template("chat")
                && let Ok(s) = tpl.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => "",
                    eos_token => "<|im_end|>",
                })
            {
                return s;
            }
            tracing::warn!("the model's chat template did not render; using ChatML");
        }
        let mut s = String::new();
        for m in &messages {
            s.push_str(&format!(
                "<|im_start|>{}\n{}<|im_end|>\n",
                m["role"].as_str().unwrap_or("user"),
                m["content"].as_str().unwrap_or("")
            ));
        }
        s.push_str("<|im_start|>assistant\n");
        s
    }

    /// Generates an answer to `req`, handing each event to `emit` (which returns false to stop).
    pub fn generate(
        &mut self,
        req: &ChatRequest,
        emit: &mut dyn FnMut(ChatEvent) -> bool,
    ) -> Result<(), ProviderError> {
        let fail = |e: candle_core::Error| failed(format!("generating: {e}"));
        let prompt = self.prompt(req);
        let ids = self
            .tokenizer
            .encode(prompt.as_str(), false)
            .map_err(|e| failed(format!("tokenizing: {e}")))?
            .get_ids()
            .to_vec();
        let max_new = req.max_tokens.map_or(512, |m| m as usize);
        if ids.len() + 1 >= MAX_SEQ_LEN {
            return Err(ProviderError::new(
                "local",
                ErrorKind::BadRequest,
                format!(
                    "the conversation is {} tokens; the local model takes at most {MAX_SEQ_LEN}: shorten it or use another model",
                    ids.len()
                ),
            ));
        }
        let max_new = max_new.min(MAX_SEQ_LEN - ids.len() - 1);
        let temperature = f64::from(req.temperature.unwrap_or(0.0));
        let sampling = if temperature <= 1e-7 {
            Sampling::ArgMax
        } else {
            match req.top_p {
                Some(p) => Sampling::TopP {
                    p: f64::from(p),
                    temperature,
                },
                None => Sampling::All { temperature },
            }
        };
        let mut sampler = LogitsProcessor::from_sampling(299_792_458, sampling);
        self.model.clear_kv_cache();
        let input = Tensor::new(ids.as_slice(), &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(fail)?;
        let mut logits = self
            .model
            .forward(&input, 0)
            .and_then(|l| l.squeeze(0))
            .map_err(fail)?;
        let mut out: Vec<u32> = Vec::new();
        let mut shown = 0usize;
        let mut stop = StopReason::Length;
        for step in 0..max_new {
            let logits_pen = if out.is_empty() {
                logits.clone()
            } else {
                let start = out.len().saturating_sub(64);
                candle_transformers::utils::apply_repeat_penalty(&logits, 1.1, &out[start..])
                    .map_err(fail)?
            };
            let next = sampler.sample(&logits_pen).map_err(fail)?;
            if self.stops.contains(&next) {
                stop = StopReason::Stop;
                break;
            }
            out.push(next);
            let text = self
                .tokenizer
                .decode(&out, true)
                .map_err(|e| failed(format!("decoding: {e}")))?;
            if text.len() > shown && !text.ends_with('\u{FFFD}') {
                let delta = text[shown..].to_owned();
                shown = text.len();
                if !emit(ChatEvent::Text { delta }) {
                    return Ok(());
                }
            }
            let input = Tensor::new(&[next], &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(fail)?;
            logits = self
                .model
                .forward(&input, ids.len() + step)
                .and_then(|l| l.squeeze(0))
                .map_err(fail)?;
        }
        emit(ChatEvent::Finished {
            stop_reason: stop,
            usage: Some(Usage {
                input_tokens: ids.len() as u64,
                output_tokens: out.len() as u64,
                cached_input_tokens: 0,
            }),
        });
        Ok(())
    }
}
