//! all-MiniLM-L6-v2 on the CPU: BERT from safetensors, mean pooling over the attention mask,
//! L2-normalized 384-dimensional vectors.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

/// A loaded embedding model.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl Embedder {
    /// Loads the model from a folder with `config.json`, `model.safetensors`, `tokenizer.json`.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| format!("cannot read {}: {e}", dir.join(name).display()))
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| format!("{}: {e}", dir.join("config.json").display()))?;
        let device = Device::Cpu;
        let vb =
            VarBuilder::from_buffered_safetensors(read("model.safetensors")?, DType::F32, &device)
                .map_err(|e| format!("loading the weights: {e}"))?;
        let model = BertModel::load(vb, &config).map_err(|e| format!("loading the model: {e}"))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| format!("loading the tokenizer: {e}"))?;
        // The shipped tokenizer pads every input to 128 tokens; one input at a time needs none.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: 256,
                ..TruncationParams::default()
            }))
            .map_err(|e| format!("configuring the tokenizer: {e}"))?;
        Ok(Self {
            model,
            tokenizer,
            device,
        })
    }

    /// The vector of `text`.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        let fail = |e: candle_core::Error| format!("embedding: {e}");
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| format!("tokenizing: {e}"))?;
        let ids = Tensor::new(enc.get_ids(), &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(fail)?;
        let mask = Tensor::new(enc.get_attention_mask(), &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(fail)?;
        let types = ids.zeros_like().map_err(fail)?;
        let hidden = self
            .model
            .forward(&ids, &types, Some(&mask))
            .map_err(fail)?;
        let m = mask
            .to_dtype(DType::F32)
            .and_then(|m| m.unsqueeze(2))
            .map_err(fail)?;
        let sum = hidden
            .broadcast_mul(&m)
            .and_then(|h| h.sum(1))
            .map_err(fail)?;
        let count = m
            .sum(1)
            .and_then(|c| c.clamp(1e-9, f64::MAX))
            .map_err(fail)?;
        let mean = sum.broadcast_div(&count).map_err(fail)?;
        let norm = mean
            .sqr()
            .and_then(|s| s.sum_keepdim(1))
            .and_then(|s| s.sqrt())
            .map_err(fail)?;
        mean.broadcast_div(&norm)
            .and_then(|v| v.squeeze(0))
            .and_then(|v| v.to_vec1::<f32>())
            .map_err(fail)
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(f32::MIN_POSITIVE)
}
