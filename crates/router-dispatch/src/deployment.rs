//! Deployments: where a model is served and how to call it.

use std::fmt;

use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::{Capacity, DispatchError};

/// The API flavour of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeploymentKind {
    /// OpenAI-compatible: `POST {base_url}/chat/completions`, `Authorization: Bearer KEY`.
    #[serde(rename = "openai")]
    OpenAi,
    /// Azure OpenAI: `POST {base_url}/openai/deployments/{model}/chat/completions?api-version=V`,
    /// `api-key: KEY`.
    #[serde(rename = "azure")]
    Azure,
}

/// A backend key. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// One backend deployment of a model.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// Its name (what catalog entries, `spillover` and `x-ms-spillover-deployment` refer to).
    pub name: String,
    /// The API flavour.
    pub kind: DeploymentKind,
    /// The base URL: `https://api.openai.com/v1` for `openai`, `https://NAME.openai.azure.com`
    /// for `azure`.
    pub base_url: Url,
    /// The model name sent upstream (`openai`) or the Azure deployment name (`azure`).
    pub model: String,
    /// The key, if the backend needs one.
    pub api_key: Option<ApiKey>,
    /// Provisioned throughput: a 429 spills over to [`Deployment::spillover`].
    pub provisioned: bool,
    /// The deployment that takes the request when this provisioned one answers 429.
    pub spillover: Option<String>,
    /// The `api-version` query parameter (required for `azure`).
    pub api_version: Option<String>,
    /// Declared tokens per minute (see [`crate::tokens_to_charge`] for what a request counts).
    pub capacity_tpm: Option<u64>,
    /// Declared requests per minute.
    pub capacity_rpm: Option<u64>,
}

impl Deployment {
    /// A deployment with no key, not provisioned, no spillover, no api-version, no declared
    /// capacity.
    pub fn new(
        name: impl Into<String>,
        kind: DeploymentKind,
        base_url: Url,
        model: impl Into<String>,
    ) -> Self {
        Deployment {
            name: name.into(),
            kind,
            base_url,
            model: model.into(),
            api_key: None,
            provisioned: false,
            spillover: None,
            api_version: None,
            capacity_tpm: None,
            capacity_rpm: None,
        }
    }

    /// Its declared capacity.
    pub fn capacity(&self) -> Capacity {
        Capacity {
            tpm: self.capacity_tpm,
            rpm: self.capacity_rpm,
        }
    }

    /// Checks the URL scheme and the Azure `api_version`.
    pub fn validate(&self) -> Result<(), DispatchError> {
        let invalid = |reason: String| DispatchError::InvalidDeployment {
            deployment: self.name.clone(),
            reason,
        };
        if self.name.is_empty() {
            return Err(invalid("the name is empty".into()));
        }
        if !matches!(self.base_url.scheme(), "http" | "https") || self.base_url.cannot_be_a_base() {
            return Err(invalid(format!(
                "base_url `{}` is not an http(s) URL",
                self.base_url
            )));
        }
        if self.model.is_empty() {
            return Err(invalid("model is empty".into()));
        }
        if self.capacity_tpm == Some(0) || self.capacity_rpm == Some(0) {
            return Err(invalid(
                "capacity_tpm and capacity_rpm must be at least 1 (leave them out for no limit)"
                    .into(),
            ));
        }
        if self.kind == DeploymentKind::Azure
            && self.api_version.as_deref().unwrap_or("").is_empty()
        {
            return Err(invalid(
                "kind `azure` needs api_version (e.g. \"2024-10-21\")".into(),
            ));
        }
        Ok(())
    }

    /// The chat-completions URL of this deployment.
    pub fn chat_completions_url(&self) -> Result<Url, DispatchError> {
        let mut url = self.base_url.clone();
        {
            let mut segments =
                url.path_segments_mut()
                    .map_err(|_| DispatchError::InvalidDeployment {
                        deployment: self.name.clone(),
                        reason: "base_url cannot be a base".into(),
                    })?;
            segments.pop_if_empty();
            match self.kind {
                DeploymentKind::OpenAi => {
                    segments.extend(["chat", "completions"]);
                }
                DeploymentKind::Azure => {
                    segments.extend([
                        "openai",
                        "deployments",
                        self.model.as_str(),
                        "chat",
                        "completions",
                    ]);
                }
            }
        }
        if self.kind == DeploymentKind::Azure {
            if let Some(version) = &self.api_version {
                url.query_pairs_mut().append_pair("api-version", version);
            }
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let base = Url::parse("http://127.0.0.1:9/v1/").unwrap();
        let d = Deployment::new("a", DeploymentKind::OpenAi, base, "gpt");
        assert_eq!(
            d.chat_completions_url().unwrap().as_str(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        let mut az = Deployment::new(
            "b",
            DeploymentKind::Azure,
            Url::parse("https://x.openai.azure.com").unwrap(),
            "my-dep",
        );
        assert!(az.validate().is_err());
        az.api_version = Some("2024-10-21".into());
        az.validate().unwrap();
        assert_eq!(
            az.chat_completions_url().unwrap().as_str(),
            "https://x.openai.azure.com/openai/deployments/my-dep/chat/completions?api-version=2024-10-21"
        );
    }

    #[test]
    fn key_is_hidden() {
        let mut d = Deployment::new(
            "a",
            DeploymentKind::OpenAi,
            Url::parse("http://h/v1").unwrap(),
            "m",
        );
        d.api_key = Some(ApiKey::new("sk-secret"));
        assert!(!format!("{d:?}").contains("sk-secret"));
    }
}
