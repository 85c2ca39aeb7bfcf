//! Model names (`provider:model`), aliases, and the catalog of what models cost and can do —
//! data (`catalog.toml`, overridable), not code.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, ProviderError};
use crate::types::Usage;

/// The catalog that ships with LOTUS.
pub const BUILTIN: &str = include_str!("catalog.toml");

/// The providers LOTUS can talk to, by the name used in `provider:model`.
pub const PROVIDERS: [&str; 6] = [
    "openai",
    "anthropic",
    "gemini",
    "ollama",
    "openrouter",
    "local",
];

/// A model, as `provider:model`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRef {
    /// `openai`, `anthropic`, …
    pub provider: String,
    /// The model's name at that provider (`gpt-4o-mini`, `llama3:8b`, `openai/gpt-4o-mini`).
    pub model: String,
}

impl ModelRef {
    /// Parses `provider:model` (the model may itself contain `:`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some((provider, model)) = s.split_once(':') else {
            return Err(format!(
                "`{s}` is not a model name: write `provider:model` (e.g. `openai:gpt-4o-mini`, `ollama:llama3`) or use an alias"
            ));
        };
        if model.trim().is_empty() {
            return Err(format!("`{s}` names no model after `{provider}:`"));
        }
        Ok(Self {
            provider: provider.to_owned(),
            model: model.to_owned(),
        })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.provider, self.model)
    }
}

/// What the catalog knows of one model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// The id sent to the provider, when it differs from the catalog name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_model: Option<String>,
    /// Context window in tokens.
    #[serde(default)]
    pub context: u64,
    /// USD per million input tokens.
    #[serde(default)]
    pub input: f64,
    /// USD per million cached input tokens (defaults to `input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// USD per million output tokens.
    #[serde(default)]
    pub output: f64,
    /// `chat`, `tools`, `vision`, `embed`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Embedding size, for embedding models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
}

impl ModelInfo {
    /// What `usage` costs with this model, in USD.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let fresh = usage.input_tokens - cached;
        (fresh as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + usage.output_tokens as f64 * self.output)
            / 1e6
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    #[serde(default)]
    models: BTreeMap<String, ModelInfo>,
}

/// Aliases and model facts.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    aliases: BTreeMap<String, String>,
    models: BTreeMap<String, ModelInfo>,
}

impl Catalog {
    /// The built-in catalog.
    pub fn builtin() -> Self {
        let mut c = Self::default();
        // The built-in file is tested to parse.
        let _ = c.merge(BUILTIN, "the built-in catalog");
        c
    }

    /// Merges a catalog file's text over this one (entries replace entries of the same name).
    pub fn merge(&mut self, text: &str, origin: &str) -> Result<(), String> {
        let f: File = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        for (name, target) in &f.aliases {
            check_alias(name, target).map_err(|e| format!("{origin}: {e}"))?;
        }
        for name in f.models.keys() {
            let m = ModelRef::parse(name).map_err(|e| format!("{origin}: {e}"))?;
            if !PROVIDERS.contains(&m.provider.as_str()) {
                return Err(format!(
                    "{origin}: model `{name}`: unknown provider `{}` (known: {})",
                    m.provider,
                    PROVIDERS.join(", ")
                ));
            }
        }
        self.aliases.extend(f.aliases);
        self.models.extend(f.models);
        Ok(())
    }

    /// Adds or replaces an alias.
    pub fn alias(&mut self, name: &str, target: &str) -> Result<(), String> {
        check_alias(name, target)?;
        self.aliases.insert(name.to_owned(), target.to_owned());
        Ok(())
    }

    /// Resolves an alias or a `provider:model` name.
    pub fn resolve(&self, name: &str) -> Result<ModelRef, ProviderError> {
        let target = self.aliases.get(name).map_or(name, String::as_str);
        let m = ModelRef::parse(target).map_err(|e| {
            let known: Vec<&str> = self.aliases.keys().map(String::as_str).collect();
            ProviderError::new(
                "router",
                ErrorKind::NotConfigured,
                format!("{e}; aliases: {}", known.join(", ")),
            )
        })?;
        if !PROVIDERS.contains(&m.provider.as_str()) {
            return Err(ProviderError::new(
                "router",
                ErrorKind::NotConfigured,
                format!(
                    "`{name}`: unknown provider `{}` (known: {})",
                    m.provider,
                    PROVIDERS.join(", ")
                ),
            ));
        }
        Ok(m)
    }

    /// What the catalog knows of `m`.
    pub fn info(&self, m: &ModelRef) -> Option<&ModelInfo> {
        self.models.get(&m.to_string())
    }

    /// The id to send to the provider for `m`.
    pub fn api_model(&self, m: &ModelRef) -> String {
        self.info(m)
            .and_then(|i| i.api_model.clone())
            .unwrap_or_else(|| m.model.clone())
    }

    /// Every alias with its target.
    pub fn aliases(&self) -> impl Iterator<Item = (&str, &str)> {
        self.aliases.iter().map(|(a, t)| (a.as_str(), t.as_str()))
    }

    /// Every model with its facts.
    pub fn models(&self) -> impl Iterator<Item = (&str, &ModelInfo)> {
        self.models.iter().map(|(n, i)| (n.as_str(), i))
    }
}

/// An alias's name may not look like a model, nor take the name of the configured chain; its
/// target must be a `provider:model` name.
fn check_alias(name: &str, target: &str) -> Result<(), String> {
    if name.contains(':') {
        return Err(format!("alias `{name}` may not contain `:`"));
    }
    if name == crate::router::DEFAULT_CHAIN {
        return Err(format!(
            "alias `{name}`: `{name}` stands for the configured chain; choose another name"
        ));
    }
    ModelRef::parse(target).map_err(|e| format!("alias `{name}`: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalog_parses_and_resolves_its_aliases() {
        let mut c = Catalog::default();
        c.merge(BUILTIN, "builtin").expect("parses");
        for (alias, _) in c.aliases() {
            let m = c.resolve(alias).expect(alias);
            assert!(
                c.info(&m).is_some(),
                "alias `{alias}` points at a listed model"
            );
        }
        let m = c.resolve("smart").expect("smart");
        assert_eq!(c.api_model(&m), "claude-sonnet-4-20250514");
        let m = c.resolve("ollama:llama3:8b").expect("colon in model");
        assert_eq!(
            (m.provider.as_str(), m.model.as_str()),
            ("ollama", "llama3:8b")
        );
        assert!(
            c.resolve("gpt-4o")
                .expect_err("no provider")
                .message
                .contains("provider:model")
        );
        assert!(
            c.resolve("acme:x")
                .expect_err("unknown")
                .message
                .contains("unknown provider")
        );
    }

    #[test]
    fn costs_follow_the_prices_with_cached_tokens_cheaper() {
        let c = Catalog::builtin();
        let info = c
            .info(&ModelRef::parse("openai:gpt-4o-mini").expect("ref"))
            .expect("listed");
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 500_000,
            cached_input_tokens: 200_000,
        };
        // 800k fresh × 0.15 + 200k cached × 0.075 + 500k × 0.60, per million.
        let expected = 0.8 * 0.15 + 0.2 * 0.075 + 0.5 * 0.60;
        assert!((info.cost(&usage) - expected).abs() < 1e-12);
    }

    #[test]
    fn a_user_catalog_overrides_and_bad_files_are_named() {
        let mut c = Catalog::builtin();
        c.merge(
            "[aliases]\nfast = \"ollama:qwen2.5\"\n[models.\"ollama:qwen2.5\"]\ncontext = 32768\n",
            "mine",
        )
        .expect("merge");
        assert_eq!(
            c.resolve("fast").expect("fast").to_string(),
            "ollama:qwen2.5"
        );
        let e = c
            .merge("[models.x]\ncontext = 1\n", "mine.toml")
            .expect_err("bad name");
        assert!(e.starts_with("mine.toml: `x` is not a model name"), "{e}");
        let e = c
            .merge("[models.\"openai:x\"]\nprice = 1\n", "mine.toml")
            .expect_err("unknown key");
        assert!(e.contains("price"), "{e}");
    }
}
