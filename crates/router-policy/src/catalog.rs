//! The catalog: what each underlying model costs and can do.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::PolicyError;

/// Output length assumed for a model whose catalog entry gives no `expected_output_tokens`.
///
/// A typical chat answer is a few hundred tokens; 512 leans long, so the cost estimate does not
/// flatter models with expensive output and the context-window check errs on the side of excluding.
pub const DEFAULT_EXPECTED_OUTPUT_TOKENS: u32 = 512;

/// A capability a request may need and a model may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Function / tool calling.
    Tools,
    /// Image inputs.
    Vision,
    /// Structured output constrained by a JSON schema.
    JsonSchema,
    /// A reasoning model (reasoning effort, hidden chain of thought).
    Reasoning,
}

impl Capability {
    /// All capabilities, in a fixed order.
    pub const ALL: [Capability; 4] = [
        Capability::Tools,
        Capability::Vision,
        Capability::JsonSchema,
        Capability::Reasoning,
    ];

    /// The snake_case name, as in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Tools => "tools",
            Capability::Vision => "vision",
            Capability::JsonSchema => "json_schema",
            Capability::Reasoning => "reasoning",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of capabilities: what a model has, or what a request needs. All `false` by default.
///
/// ```
/// use router_policy::{Capabilities, Capability};
/// let model = Capabilities { tools: true, ..Capabilities::default() };
/// let needs = Capabilities::default().with(Capability::Tools).with(Capability::Vision);
/// assert_eq!(model.missing(&needs), vec![Capability::Vision]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capabilities {
    /// Function / tool calling.
    pub tools: bool,
    /// Image inputs.
    pub vision: bool,
    /// Structured output constrained by a JSON schema.
    pub json_schema: bool,
    /// A reasoning model.
    pub reasoning: bool,
}

impl Capabilities {
    /// Whether `capability` is in the set.
    pub fn has(&self, capability: Capability) -> bool {
        match capability {
            Capability::Tools => self.tools,
            Capability::Vision => self.vision,
            Capability::JsonSchema => self.json_schema,
            Capability::Reasoning => self.reasoning,
        }
    }

    /// The set with `capability` added.
    pub fn with(mut self, capability: Capability) -> Self {
        match capability {
            Capability::Tools => self.tools = true,
            Capability::Vision => self.vision = true,
            Capability::JsonSchema => self.json_schema = true,
            Capability::Reasoning => self.reasoning = true,
        }
        self
    }

    /// The capabilities in the set, in [`Capability::ALL`] order.
    pub fn list(&self) -> Vec<Capability> {
        Capability::ALL
            .into_iter()
            .filter(|c| self.has(*c))
            .collect()
    }

    /// The capabilities in `needs` that `self` lacks, in [`Capability::ALL`] order.
    pub fn missing(&self, needs: &Capabilities) -> Vec<Capability> {
        Capability::ALL
            .into_iter()
            .filter(|c| needs.has(*c) && !self.has(*c))
            .collect()
    }
}

/// One underlying model in the catalog.
///
/// On disk it is one `[[models]]` entry with flat keys (the capabilities are top-level booleans of
/// the entry, not a sub-table, so a typo there is caught like any other):
///
/// | key | type | default |
/// |-----|------|---------|
/// | `name` | string, a bundle column | required |
/// | `input_price`, `output_price` | USD per 1M tokens, finite, `>= 0` | required |
/// | `context_window` | tokens, `>= 1` | required |
/// | `expected_output_tokens` | tokens | [`DEFAULT_EXPECTED_OUTPUT_TOKENS`] |
/// | `tools`, `vision`, `json_schema`, `reasoning` | bool | `false` |
/// | `deployments` | deployment names | `[]` |
///
/// Any other key in the entry is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RawModelSpec", into = "RawModelSpec")]
pub struct ModelSpec {
    /// The model's name: one of the router bundle's columns.
    pub name: String,
    /// USD per 1M input tokens.
    pub input_price: f64,
    /// USD per 1M output tokens.
    pub output_price: f64,
    /// Prompt plus output tokens the model accepts.
    pub context_window: u64,
    /// The output length assumed when the request gives no `max_tokens`.
    pub expected_output_tokens: u32,
    /// What the model can do.
    pub capabilities: Capabilities,
    /// The deployments serving this model (used by dispatch, not by the policy).
    pub deployments: Vec<String>,
}

impl ModelSpec {
    /// A model with the given prices (USD per 1M tokens) and window, no capabilities, no
    /// deployments and [`DEFAULT_EXPECTED_OUTPUT_TOKENS`].
    pub fn new(
        name: impl Into<String>,
        input_price: f64,
        output_price: f64,
        context_window: u64,
    ) -> Self {
        ModelSpec {
            name: name.into(),
            input_price,
            output_price,
            context_window,
            expected_output_tokens: DEFAULT_EXPECTED_OUTPUT_TOKENS,
            capabilities: Capabilities::default(),
            deployments: Vec::new(),
        }
    }

    /// Sets the expected output length.
    pub fn expected_output_tokens(mut self, tokens: u32) -> Self {
        self.expected_output_tokens = tokens;
        self
    }

    /// Sets the capabilities.
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Sets the deployments.
    pub fn deployments<I, S>(mut self, deployments: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.deployments = deployments.into_iter().map(Into::into).collect();
        self
    }

    /// The output tokens the cost estimate charges for when no length is predicted:
    /// [`ModelSpec::billed_output_tokens_for`] with the catalog's `expected_output_tokens`.
    pub fn billed_output_tokens(&self, max_tokens: Option<u32>) -> u64 {
        self.billed_output_tokens_for(max_tokens, None)
    }

    /// The output tokens the cost estimate charges for: the expected answer length, capped by
    /// `max_tokens` when the request gives one (a cap says the answer is at most that long; it does
    /// not say it will be that long). The expected length is `predicted` (a bundle's output-length
    /// head's figure for this model and prompt, rounded, at least 1) when it is a finite number,
    /// else the catalog's `expected_output_tokens`.
    ///
    /// ```
    /// use router_policy::ModelSpec;
    /// let spec = ModelSpec::new("m", 1.0, 2.0, 8192).expected_output_tokens(300);
    /// assert_eq!(spec.billed_output_tokens_for(None, None), 300);
    /// assert_eq!(spec.billed_output_tokens_for(None, Some(912.4)), 912);
    /// assert_eq!(spec.billed_output_tokens_for(Some(500), Some(912.4)), 500);
    /// assert_eq!(spec.billed_output_tokens_for(None, Some(f32::NAN)), 300);
    /// ```
    pub fn billed_output_tokens_for(&self, max_tokens: Option<u32>, predicted: Option<f32>) -> u64 {
        let expected = match predicted {
            // `as` saturates: a huge prediction is u64::MAX tokens, never a wrap-around.
            Some(tokens) if tokens.is_finite() => (tokens.round() as u64).max(1),
            _ => u64::from(self.expected_output_tokens),
        };
        match max_tokens {
            Some(cap) => expected.min(u64::from(cap)),
            None => expected,
        }
    }

    /// The output tokens the context window must leave room for: the request's `max_tokens` when
    /// given (the backend rejects a request whose prompt plus `max_tokens` overflows), else
    /// `expected_output_tokens`.
    pub fn reserved_output_tokens(&self, max_tokens: Option<u32>) -> u64 {
        u64::from(max_tokens.unwrap_or(self.expected_output_tokens))
    }

    /// Checks the entry on its own: a name, finite non-negative prices, a window of at least 1.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.name.trim().is_empty() {
            return Err(PolicyError::EmptyModelName);
        }
        for (field, value) in [
            ("input_price", self.input_price),
            ("output_price", self.output_price),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(PolicyError::InvalidPrice {
                    model: self.name.clone(),
                    field,
                    value,
                });
            }
        }
        if self.context_window == 0 {
            return Err(PolicyError::ZeroContextWindow {
                model: self.name.clone(),
            });
        }
        Ok(())
    }
}

/// The estimated cost in USD of one request: `input_tokens × input_price + output_tokens ×
/// output_price`, prices being per 1M tokens.
///
/// ```
/// use router_policy::{estimated_cost, ModelSpec};
/// let gpt4 = ModelSpec::new("gpt-4", 10.0, 30.0, 128_000);
/// // 1000 × $10/M + 300 × $30/M = $0.01 + $0.009
/// assert!((estimated_cost(&gpt4, 1000, 300) - 0.019).abs() < 1e-12);
/// ```
pub fn estimated_cost(spec: &ModelSpec, input_tokens: u64, output_tokens: u64) -> f64 {
    // Dividing once at the end keeps the hand-computed numbers in tests exact where possible.
    (input_tokens as f64 * spec.input_price + output_tokens as f64 * spec.output_price) / 1e6
}

/// The on-disk shape of a `[[models]]` entry: flat capability flags, optional keys with defaults,
/// unknown keys rejected. (`deny_unknown_fields` does not work through `#[serde(flatten)]`, hence
/// this private twin of [`ModelSpec`].)
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelSpec {
    name: String,
    input_price: f64,
    output_price: f64,
    context_window: u64,
    #[serde(default = "default_expected_output_tokens")]
    expected_output_tokens: u32,
    #[serde(default)]
    tools: bool,
    #[serde(default)]
    vision: bool,
    #[serde(default)]
    json_schema: bool,
    #[serde(default)]
    reasoning: bool,
    #[serde(default)]
    deployments: Vec<String>,
}

fn default_expected_output_tokens() -> u32 {
    DEFAULT_EXPECTED_OUTPUT_TOKENS
}

impl From<RawModelSpec> for ModelSpec {
    fn from(r: RawModelSpec) -> Self {
        ModelSpec {
            name: r.name,
            input_price: r.input_price,
            output_price: r.output_price,
            context_window: r.context_window,
            expected_output_tokens: r.expected_output_tokens,
            capabilities: Capabilities {
                tools: r.tools,
                vision: r.vision,
                json_schema: r.json_schema,
                reasoning: r.reasoning,
            },
            deployments: r.deployments,
        }
    }
}

impl From<ModelSpec> for RawModelSpec {
    fn from(m: ModelSpec) -> Self {
        RawModelSpec {
            name: m.name,
            input_price: m.input_price,
            output_price: m.output_price,
            context_window: m.context_window,
            expected_output_tokens: m.expected_output_tokens,
            tools: m.capabilities.tools,
            vision: m.capabilities.vision,
            json_schema: m.capabilities.json_schema,
            reasoning: m.capabilities.reasoning,
            deployments: m.deployments,
        }
    }
}

/// The models the router may choose from: the `[[models]]` array of the server config.
///
/// Other top-level tables (`[server]`, `[router]`, `[[deployments]]`, ...) are ignored, so a whole
/// server config parses as a catalog; unknown keys inside a `[[models]]` entry are errors.
///
/// ```
/// use router_policy::Catalog;
/// let catalog = Catalog::from_toml_str(r#"
///     [server]
///     listen = "127.0.0.1:8080"
///
///     [[models]]
///     name = "gpt-4-1106-preview"
///     input_price = 10.0
///     output_price = 30.0
///     context_window = 128000
///     expected_output_tokens = 300
///     tools = true
///     json_schema = true
///     deployments = ["gpt4-ptu"]
/// "#).unwrap();
/// let gpt4 = catalog.get("gpt-4-1106-preview").unwrap();
/// assert!(gpt4.capabilities.tools && !gpt4.capabilities.vision);
///
/// let typo = Catalog::from_toml_str(r#"
///     [[models]]
///     name = "m"
///     input_price = 1.0
///     output_price = 1.0
///     context_window = 8192
///     tool = true
/// "#).unwrap_err();
/// assert!(typo.to_string().contains("unknown field `tool`"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// The models, in file order (the order never affects a decision).
    #[serde(default)]
    pub models: Vec<ModelSpec>,
}

impl Catalog {
    /// A catalog of these models (not validated until [`Catalog::validate`] or
    /// [`Policy::new`](crate::Policy::new)).
    pub fn new(models: Vec<ModelSpec>) -> Self {
        Catalog { models }
    }

    /// Parses the `[[models]]` array of a TOML document and validates it
    /// ([`Catalog::validate`]).
    pub fn from_toml_str(text: &str) -> Result<Self, PolicyError> {
        let catalog: Catalog =
            toml::from_str(text).map_err(|e| PolicyError::CatalogToml(e.to_string()))?;
        catalog.validate()?;
        Ok(catalog)
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Checks what can be checked without the bundle: at least one model, each entry valid
    /// ([`ModelSpec::validate`]), no name twice.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.models.is_empty() {
            return Err(PolicyError::EmptyCatalog);
        }
        let mut seen = BTreeSet::new();
        for model in &self.models {
            model.validate()?;
            if !seen.insert(model.name.as_str()) {
                return Err(PolicyError::DuplicateModel {
                    model: model.name.clone(),
                });
            }
        }
        Ok(())
    }
}
