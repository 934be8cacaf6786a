//! The server's config: the TOML file's typed form ([`ConfigFile`]: `[server]`, `[router]`,
//! `[dispatch]`, `[store]`, `[shadow]`, `[usage]`, `[[models]]`, `[[deployments]]`), parsed from text or
//! built in code ([`ServerConfig::builder`]), and validated once, by one function, into a
//! [`ServerConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use router_dispatch::{ApiKey, Deployment, DeploymentKind, DispatchOptions};
use router_policy::{Catalog, Mode, ModelSpec};
use router_store::{Location, OnFull, PostgresUrl, StoreOptions, Synchronous, DEFAULT_MAX_BYTES};
use serde::{Deserialize, Serialize};

use crate::ServerError;

/// The default request body limit: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The default name under which the router itself is addressed (`"model": "model-router"`).
pub const DEFAULT_ROUTER_NAME: &str = "model-router";
/// The default cap on client connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How the access log writes a line (`server.log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `access ts=… status=… key=value …`, values quoted and escaped when they need it.
    #[default]
    Logfmt,
    /// One JSON object per line.
    Json,
}

/// A validated server config. Build it with [`ServerConfig::builder`] (in code),
/// [`ServerConfig::load`] (a file, keys from the process environment) or
/// [`ServerConfig::from_toml_str`] (any text and environment); all three validate the same way.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The file it came from (for messages).
    pub file: String,
    /// The file [`ServerConfig::load`] read, which a reload reads again; `None` for a config
    /// parsed from text (a reload then loads the same bundle path with the same catalog).
    pub source: Option<PathBuf>,
    /// `server.listen`.
    pub listen: SocketAddr,
    /// Proxy keys (from the variable named by `server.api_keys_env`); empty = no auth.
    pub api_keys: Vec<String>,
    /// The key of `POST /admin/reload` (from the variable named by `server.admin_key_env`);
    /// `None`: that endpoint does not exist (404).
    pub admin_key: Option<String>,
    /// `server.max_body_bytes`.
    pub max_body_bytes: usize,
    /// `server.max_batch`: most prompts scored in one batch.
    pub max_batch: usize,
    /// `server.batch_tokens`: token budget of one scoring batch.
    pub batch_tokens: usize,
    /// `server.queue`: most prompts waiting for the scorer before requests get 503.
    pub queue: usize,
    /// `server.access_log`: the server writes one line per chat request (default on). Off,
    /// the access events still reach the process's own `tracing` subscriber.
    pub access_log: bool,
    /// `server.access_log_path`: the file the access log is appended to (relative paths
    /// resolve against the config's directory); `None`: stderr.
    pub access_log_path: Option<PathBuf>,
    /// `server.log_format`: `logfmt` (default) or `json`.
    pub log_format: LogFormat,
    /// `server.max_connections`: client connections served at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`]). Beyond it a few more are accepted with a short
    /// header timeout to answer `GET /health` and a 503 (with `Retry-After`) for the rest.
    pub max_connections: usize,
    /// `server.header_timeout_ms`: time a connection may take to send a whole request head,
    /// counted from the connection's start or the end of its previous response, so it is
    /// also the idle keep-alive timeout (default 10 s).
    pub header_timeout: Duration,
    /// `server.body_timeout_ms`: time a request may take to send its whole body (default
    /// 30 s); a late one gets 408.
    pub body_timeout: Duration,
    /// `router.bundle`, resolved against the config file's directory.
    pub bundle: PathBuf,
    /// `router.name`: the model name that asks for routing (default `model-router`).
    pub router_name: String,
    /// `router.mode`.
    pub mode: Mode,
    /// `router.band`.
    pub band: Option<f64>,
    /// `router.subset`.
    pub subset: Option<Vec<String>>,
    /// `router.recent_turns`: non-system messages (from the end) that the router reads.
    pub recent_turns: usize,
    /// The `[[models]]` catalog (the bundle's `catalog.toml` when the config has none).
    pub catalog: Catalog,
    /// `[[deployments]]`.
    pub deployments: Vec<Deployment>,
    /// `[dispatch]`.
    pub dispatch: DispatchOptions,
    /// `[store]`: where and how `"store": true` requests are kept; `None` = not stored.
    pub store: Option<StoreConfig>,
    /// `[shadow]`: which routed requests also go to other models, after the client's answer.
    pub shadow: Option<ShadowConfig>,
    /// `[usage]`: where usage per deployment and minute is recorded; `None` (no `[store]` and
    /// no `[usage]`) = not recorded.
    pub usage: Option<UsageConfig>,
}

/// How often recorded usage is written when `usage.flush_interval_ms` does not say.
pub const DEFAULT_USAGE_FLUSH: Duration = Duration::from_secs(60);
/// Days of usage kept when `usage.retention_days` does not say.
pub const DEFAULT_USAGE_RETENTION_DAYS: u32 = 90;

/// Usage recording (every request's usage per deployment and minute, for `model-router
/// capacity`): into the store's database when `[store]` is set, else into a usage file.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageConfig {
    /// `usage.path`: an SQLite usage file of its own (relative paths resolve against the
    /// config's directory); `None`: the store's database.
    pub location: Option<Location>,
    /// `usage.retention_days`: rows older than this are deleted at each flush (default
    /// [`DEFAULT_USAGE_RETENTION_DAYS`]).
    pub retention_days: u32,
    /// `usage.flush_interval_ms`: how often the usage aggregated in memory is written
    /// (default [`DEFAULT_USAGE_FLUSH`]); it is also written at shutdown.
    pub flush_interval: Duration,
}

/// The `[shadow]` section: shadow traffic. A sampled share of routed requests is sent again,
/// after the client has its answer, to each listed model other than the one that answered;
/// every answer is stored linked to the original exchange (see `router_store::ROUTER_OWNER`).
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// `shadow.rate`: the share of routed requests shadowed, in [0, 1].
    pub rate: f64,
    /// `shadow.models`: catalog models with deployments.
    pub models: Vec<String>,
    /// `shadow.max_cost_per_day`: USD (reported usage × catalog prices) per UTC day; once
    /// spent, shadows are dropped until midnight UTC.
    pub max_cost_per_day: f64,
    /// `shadow.queue`: most shadowed requests waiting (default 256); more are dropped.
    pub queue: usize,
    /// `shadow.workers`: shadowed requests in flight at once (default 4).
    pub workers: usize,
    /// `shadow.seed`: seeds the sampling, for reproducible runs (default: random).
    pub seed: Option<u64>,
}

/// The `[store]` section: stored completions.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Where: `store.path`, an SQLite file (relative paths resolve against the config's
    /// directory), or `store.url`, a PostgreSQL database (`postgres://user@host:port/db`, which
    /// several replicas can share) with its password read from the environment variable
    /// `store.password_env`.
    pub location: Location,
    /// `store.max_bytes` (default 1 GiB), `store.on_full` (`refuse`, the default, or
    /// `evict_oldest`) and `store.synchronous` (`full`, the default, or `normal`).
    pub options: StoreOptions,
}

/// The config file as written: every key optional where the file may leave it out, nothing
/// checked yet. [`ServerConfig::from_toml_str`] parses text into it and
/// [`ServerConfig::builder`] fills it in code; [`ConfigFile::to_toml`] writes it back as a file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[server]`.
    #[serde(default)]
    pub server: ServerSection,
    /// `[router]`.
    pub router: RouterSection,
    /// `[dispatch]`.
    #[serde(default)]
    pub dispatch: DispatchSection,
    /// `[store]`.
    pub store: Option<StoreSection>,
    /// `[shadow]`.
    pub shadow: Option<ShadowSection>,
    /// `[usage]`.
    pub usage: Option<UsageSection>,
    /// `[[models]]`: the catalog (empty: the bundle's `catalog.toml`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelSpec>,
    /// `[[deployments]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<DeploymentSection>,
}

/// `[server]`; see [`ServerConfig`] for each key's meaning and default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// `listen`: IP:port (default [`DEFAULT_LISTEN`]).
    pub listen: Option<String>,
    /// `api_keys_env`: the variable with the comma-separated proxy keys.
    pub api_keys_env: Option<String>,
    /// `admin_key_env`: the variable with the key of `POST /admin/reload`.
    pub admin_key_env: Option<String>,
    /// `max_body_bytes`.
    pub max_body_bytes: Option<usize>,
    /// `max_batch`.
    pub max_batch: Option<usize>,
    /// `batch_tokens`.
    pub batch_tokens: Option<usize>,
    /// `queue`.
    pub queue: Option<usize>,
    /// `access_log`.
    pub access_log: Option<bool>,
    /// `access_log_path`.
    pub access_log_path: Option<PathBuf>,
    /// `log_format`.
    pub log_format: Option<LogFormat>,
    /// `max_connections`.
    pub max_connections: Option<usize>,
    /// `header_timeout_ms`.
    pub header_timeout_ms: Option<u64>,
    /// `body_timeout_ms`.
    pub body_timeout_ms: Option<u64>,
}

/// `[router]`; see [`ServerConfig`] for each key's meaning and default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    /// `bundle`: the bundle directory.
    pub bundle: PathBuf,
    /// `name`.
    pub name: Option<String>,
    /// `mode`.
    pub mode: Option<Mode>,
    /// `band`.
    pub band: Option<f64>,
    /// `subset`.
    pub subset: Option<Vec<String>>,
    /// `recent_turns`.
    pub recent_turns: Option<usize>,
}

/// `[dispatch]`, in milliseconds; see [`DispatchOptions`] for each value's meaning and default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchSection {
    /// `timeout_ms`.
    pub timeout_ms: Option<u64>,
    /// `connect_timeout_ms`.
    pub connect_timeout_ms: Option<u64>,
    /// `read_timeout_ms`.
    pub read_timeout_ms: Option<u64>,
    /// `max_retries`.
    pub max_retries: Option<u32>,
    /// `backoff_ms`.
    pub backoff_ms: Option<u64>,
    /// `max_backoff_ms`.
    pub max_backoff_ms: Option<u64>,
    /// `default_cooldown_ms`.
    pub default_cooldown_ms: Option<u64>,
    /// `max_cooldown_ms`.
    pub max_cooldown_ms: Option<u64>,
    /// `probe_interval_ms`.
    pub probe_interval_ms: Option<u64>,
    /// `false` turns capacity-aware dispatch off (only 429s and cooldowns decide).
    pub capacity_aware: Option<bool>,
    /// The sliding window declared capacities are enforced over (default 60000: a minute).
    pub capacity_window_ms: Option<u64>,
}

/// `[store]`: `path` (SQLite) or `url` (PostgreSQL); see [`StoreConfig`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `path`: an SQLite file.
    pub path: Option<PathBuf>,
    /// `url`: a PostgreSQL database.
    pub url: Option<String>,
    /// `password_env`: the variable with the PostgreSQL password.
    pub password_env: Option<String>,
    /// `max_bytes`.
    pub max_bytes: Option<u64>,
    /// `on_full`: `refuse` or `evict_oldest`.
    pub on_full: Option<String>,
    /// `synchronous`: `full` or `normal`.
    pub synchronous: Option<String>,
}

/// `[shadow]`; see [`ShadowConfig`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSection {
    /// `rate`.
    pub rate: f64,
    /// `models`.
    pub models: Vec<String>,
    /// `max_cost_per_day`.
    pub max_cost_per_day: f64,
    /// `queue`.
    pub queue: Option<usize>,
    /// `workers`.
    pub workers: Option<usize>,
    /// `seed`.
    pub seed: Option<u64>,
}

/// `[usage]`; see [`UsageConfig`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageSection {
    /// `path`: the usage file (SQLite) when there is no `[store]`.
    pub path: Option<PathBuf>,
    /// `retention_days`.
    pub retention_days: Option<u32>,
    /// `flush_interval_ms`.
    pub flush_interval_ms: Option<u64>,
}

/// One `[[deployments]]` entry; see [`Deployment`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSection {
    /// `name`.
    pub name: String,
    /// `kind`: `openai` or `azure`.
    pub kind: DeploymentKind,
    /// `base_url`.
    pub base_url: String,
    /// `model`: the model (or Azure deployment) sent upstream.
    pub model: String,
    /// The variable that holds the deployment's key.
    pub api_key_env: Option<String>,
    /// `provisioned`.
    #[serde(default)]
    pub provisioned: bool,
    /// `spillover`.
    pub spillover: Option<String>,
    /// `api_version` (Azure).
    pub api_version: Option<String>,
    /// Declared tokens per minute: capacity-aware dispatch skips the deployment before sending
    /// when its last minute leaves no room (see router-dispatch's crate docs).
    #[serde(default)]
    pub capacity_tpm: Option<u64>,
    /// Declared requests per minute, likewise.
    #[serde(default)]
    pub capacity_rpm: Option<u64>,
}

impl DeploymentSection {
    /// An OpenAI-compatible deployment `name` at `base_url` that is sent `model`: no key, not
    /// provisioned.
    pub fn openai(
        name: impl Into<String>,
        base_url: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        DeploymentSection {
            name: name.into(),
            kind: DeploymentKind::OpenAi,
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            provisioned: false,
            spillover: None,
            api_version: None,
            capacity_tpm: None,
            capacity_rpm: None,
        }
    }

    /// An Azure OpenAI deployment `name` at `base_url` whose Azure deployment is `model`.
    pub fn azure(
        name: impl Into<String>,
        base_url: impl Into<String>,
        model: impl Into<String>,
        api_version: impl Into<String>,
    ) -> Self {
        DeploymentSection {
            kind: DeploymentKind::Azure,
            api_version: Some(api_version.into()),
            ..DeploymentSection::openai(name, base_url, model)
        }
    }

    /// Its key is read from the environment variable `var`.
    pub fn api_key_env(mut self, var: impl Into<String>) -> Self {
        self.api_key_env = Some(var.into());
        self
    }

    /// Provisioned throughput that spills over to the deployment `spillover` on a 429.
    pub fn provisioned(mut self, spillover: impl Into<String>) -> Self {
        self.provisioned = true;
        self.spillover = Some(spillover.into());
        self
    }
}

impl ServerConfig {
    /// A builder of a config that serves the bundle at `bundle`, with every other value at
    /// its default until set; [`ServerConfigBuilder::build`] validates it as a file would be.
    ///
    /// ```
    /// use router_policy::{Mode, ModelSpec};
    /// use router_server::{DeploymentSection, LogFormat, ServerConfig};
    ///
    /// let config = ServerConfig::builder("models/routerbench")
    ///     .listen("127.0.0.1:0".parse()?)
    ///     .mode(Mode::Cost)
    ///     .log_format(LogFormat::Json)
    ///     .model(ModelSpec::new("gpt-4o", 2.5, 10.0, 128_000).deployments(["gpt4o"]))
    ///     .deployment(DeploymentSection::openai("gpt4o", "http://127.0.0.1:9/v1", "gpt-4o"))
    ///     .dispatch(|d| d.max_retries = Some(0))
    ///     .build()?;
    /// assert_eq!(config.deployments[0].name, "gpt4o");
    /// // The same config as a file, for `model-router serve --config FILE`:
    /// let text = ServerConfig::builder("models/routerbench").to_toml()?;
    /// assert!(text.contains("[router]"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder(bundle: impl Into<PathBuf>) -> ServerConfigBuilder {
        ServerConfigBuilder::from(ConfigFile {
            router: RouterSection {
                bundle: bundle.into(),
                ..RouterSection::default()
            },
            ..ConfigFile::default()
        })
    }

    /// Reads and validates `path`; keys come from the process environment.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ServerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ServerError::ReadConfig {
            file: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Self::from_toml_str(&text, &path.display().to_string(), base, |name| {
            std::env::var(name).ok()
        })?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config `text`. `file` names it in errors, relative paths resolve
    /// against `base_dir`, and `env` looks up the variables named by `api_keys_env` and
    /// `api_key_env`.
    pub fn from_toml_str(
        text: &str,
        file: &str,
        base_dir: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ServerError> {
        ConfigFile::from_toml_str(text, file)?.validate(file, base_dir, &env)
    }
}

/// Where a builder looks up the variables that the `*_env` keys name.
type EnvLookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Builds a [`ServerConfig`] in code (see [`ServerConfig::builder`]): it fills a
/// [`ConfigFile`] and validates it with [`ConfigFile::validate`], the same check a file gets.
/// Environment variables come from the process unless [`ServerConfigBuilder::env`] says
/// otherwise; relative paths resolve against the working directory unless
/// [`ServerConfigBuilder::base_dir`] says otherwise.
pub struct ServerConfigBuilder {
    file: ConfigFile,
    name: String,
    base_dir: PathBuf,
    env: EnvLookup,
}

impl From<ConfigFile> for ServerConfigBuilder {
    fn from(file: ConfigFile) -> Self {
        ServerConfigBuilder {
            file,
            name: "(config built in code)".to_string(),
            base_dir: PathBuf::from("."),
            env: Box::new(|name| std::env::var(name).ok()),
        }
    }
}

impl std::fmt::Debug for ServerConfigBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfigBuilder")
            .field("file", &self.file)
            .field("name", &self.name)
            .field("base_dir", &self.base_dir)
            .finish_non_exhaustive()
    }
}

impl ServerConfigBuilder {
    /// `server.listen`.
    pub fn listen(self, addr: SocketAddr) -> Self {
        self.server(|s| s.listen = Some(addr.to_string()))
    }

    /// `server.api_keys_env`: the variable that holds the comma-separated proxy keys.
    pub fn api_keys_env(self, var: impl Into<String>) -> Self {
        let var = var.into();
        self.server(|s| s.api_keys_env = Some(var))
    }

    /// `server.admin_key_env`: the variable that holds the key of `POST /admin/reload`.
    pub fn admin_key_env(self, var: impl Into<String>) -> Self {
        let var = var.into();
        self.server(|s| s.admin_key_env = Some(var))
    }

    /// `server.access_log`.
    pub fn access_log(self, enabled: bool) -> Self {
        self.server(|s| s.access_log = Some(enabled))
    }

    /// `server.access_log_path`.
    pub fn access_log_path(self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        self.server(|s| s.access_log_path = Some(path))
    }

    /// `server.log_format`.
    pub fn log_format(self, format: LogFormat) -> Self {
        self.server(|s| s.log_format = Some(format))
    }

    /// `router.mode`.
    pub fn mode(self, mode: Mode) -> Self {
        self.router(|r| r.mode = Some(mode))
    }

    /// Edits `[server]`.
    pub fn server(mut self, edit: impl FnOnce(&mut ServerSection)) -> Self {
        edit(&mut self.file.server);
        self
    }

    /// Edits `[router]`.
    pub fn router(mut self, edit: impl FnOnce(&mut RouterSection)) -> Self {
        edit(&mut self.file.router);
        self
    }

    /// Edits `[dispatch]`.
    pub fn dispatch(mut self, edit: impl FnOnce(&mut DispatchSection)) -> Self {
        edit(&mut self.file.dispatch);
        self
    }

    /// `[store]`.
    pub fn store(mut self, store: StoreSection) -> Self {
        self.file.store = Some(store);
        self
    }

    /// `[shadow]`.
    pub fn shadow(mut self, shadow: ShadowSection) -> Self {
        self.file.shadow = Some(shadow);
        self
    }

    /// `[usage]`.
    pub fn usage(mut self, usage: UsageSection) -> Self {
        self.file.usage = Some(usage);
        self
    }

    /// Adds a `[[models]]` entry.
    pub fn model(mut self, model: ModelSpec) -> Self {
        self.file.models.push(model);
        self
    }

    /// Adds a `[[deployments]]` entry.
    pub fn deployment(mut self, deployment: DeploymentSection) -> Self {
        self.file.deployments.push(deployment);
        self
    }

    /// Where the variables named by the `*_env` keys are looked up (default: the process
    /// environment).
    pub fn env(mut self, env: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.env = Box::new(env);
        self
    }

    /// The directory relative paths resolve against (default: the working directory).
    pub fn base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = dir.into();
        self
    }

    /// The name errors give the config (default `(config built in code)`).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The file as built so far.
    pub fn file(&self) -> &ConfigFile {
        &self.file
    }

    /// The file as TOML text ([`ConfigFile::to_toml`]).
    pub fn to_toml(&self) -> Result<String, ServerError> {
        self.file.to_toml()
    }

    /// Validates the config ([`ConfigFile::validate`]).
    pub fn build(self) -> Result<ServerConfig, ServerError> {
        self.file.validate(&self.name, &self.base_dir, &*self.env)
    }
}

impl StoreSection {
    /// An SQLite store at `path` with the default size, policy and durability.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        StoreSection {
            path: Some(path.into()),
            ..StoreSection::default()
        }
    }
}

/// Looks an environment variable up by name.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A value that fails validation: its key (e.g. `deployments[1].base_url`) and why.
struct Invalid {
    key: String,
    reason: String,
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl ConfigFile {
    /// Parses TOML `text` (`file` names it in errors); nothing is validated yet.
    pub fn from_toml_str(text: &str, file: &str) -> Result<ConfigFile, ServerError> {
        toml::from_str(text).map_err(|e| ServerError::ConfigSyntax {
            file: file.to_string(),
            reason: e.to_string().trim_end().to_string(),
        })
    }

    /// The file as TOML text ([`ConfigFile::from_toml_str`] reads it back unchanged), for
    /// `model-router serve --config FILE`.
    pub fn to_toml(&self) -> Result<String, ServerError> {
        toml::to_string(self).map_err(|e| ServerError::ConfigSyntax {
            file: "(config written as TOML)".to_string(),
            reason: e.to_string(),
        })
    }

    /// Checks every value and resolves what the file refers to: `file` names it in errors,
    /// relative paths resolve against `base_dir`, and `env` looks up the variables that
    /// the `*_env` keys name. The one validation of every config, however it was made.
    pub fn validate(
        self,
        file: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ServerConfig, ServerError> {
        self.checked(file, base_dir, env)
            .map_err(|Invalid { key, reason }| ServerError::Config {
                file: file.to_string(),
                key,
                reason,
            })
    }

    fn checked(self, file: &str, base_dir: &Path, env: Env<'_>) -> Result<ServerConfig, Invalid> {
        let ConfigFile {
            server,
            router,
            dispatch,
            store,
            shadow,
            usage,
            models,
            deployments,
        } = self;
        let (listen, api_keys) = listen_and_keys(&server, env)?;
        let admin_key = admin_key(&server, env)?;
        let (bundle, router_name) = check_router(&router, base_dir)?;
        let catalog = catalog(models, &bundle, &router_name)?;
        let deployments = check_deployments(deployments, &catalog, env)?;
        let dispatch = dispatch_options(&dispatch)?;
        let store = store.map(|s| store_config(&s, base_dir, env)).transpose()?;
        let shadow = shadow
            .map(|s| shadow_config(s, &catalog, store.is_some()))
            .transpose()?;
        let usage = usage_config(usage, store.is_some(), base_dir)?;
        Ok(ServerConfig {
            file: file.to_string(),
            source: None,
            listen,
            api_keys,
            admin_key,
            max_body_bytes: at_least_one(
                "server.max_body_bytes",
                server.max_body_bytes,
                DEFAULT_MAX_BODY_BYTES,
            )?,
            max_batch: at_least_one("server.max_batch", server.max_batch, 32)?,
            batch_tokens: at_least_one("server.batch_tokens", server.batch_tokens, 16_384)?,
            queue: at_least_one("server.queue", server.queue, 1024)?,
            access_log: server.access_log.unwrap_or(true),
            access_log_path: server.access_log_path.map(|p| base_dir.join(p)),
            log_format: server.log_format.unwrap_or_default(),
            max_connections: at_least_one(
                "server.max_connections",
                server.max_connections,
                DEFAULT_MAX_CONNECTIONS,
            )?,
            header_timeout: positive_ms(
                "server.header_timeout_ms",
                server.header_timeout_ms,
                Duration::from_secs(10),
            )?,
            body_timeout: positive_ms(
                "server.body_timeout_ms",
                server.body_timeout_ms,
                Duration::from_secs(30),
            )?,
            bundle,
            router_name,
            mode: router.mode.unwrap_or_default(),
            band: router.band,
            subset: router.subset,
            recent_turns: router.recent_turns.unwrap_or(6),
            catalog,
            deployments,
            dispatch,
            store,
            shadow,
            usage,
        })
    }
}

/// `[usage]`: its own file, or the store's database; `None` when there is neither.
fn usage_config(
    u: Option<UsageSection>,
    has_store: bool,
    base_dir: &Path,
) -> Result<Option<UsageConfig>, Invalid> {
    let u = match u {
        None if !has_store => return Ok(None),
        u => u.unwrap_or_default(),
    };
    let location = match &u.path {
        Some(path) if path.to_string_lossy().trim().is_empty() => {
            return Err(invalid("usage.path", "is empty"))
        }
        Some(path) => Some(Location::Sqlite(base_dir.join(path))),
        None if has_store => None,
        None => {
            return Err(invalid(
                "usage.path",
                "missing: without `[store]` usage needs a file of its own",
            ))
        }
    };
    let retention_days = match u.retention_days {
        Some(0) => return Err(invalid("usage.retention_days", "must be at least 1")),
        days => days.unwrap_or(DEFAULT_USAGE_RETENTION_DAYS),
    };
    let flush_interval = positive_ms(
        "usage.flush_interval_ms",
        u.flush_interval_ms,
        DEFAULT_USAGE_FLUSH,
    )?;
    Ok(Some(UsageConfig {
        location,
        retention_days,
        flush_interval,
    }))
}

/// `value`, or `default` when it is absent; 0 is refused.
fn at_least_one(key: &str, value: Option<usize>, default: usize) -> Result<usize, Invalid> {
    match value {
        Some(0) => Err(invalid(key, "must be at least 1")),
        value => Ok(value.unwrap_or(default)),
    }
}

/// Milliseconds `value` as a duration, or `default`; 0 is refused.
fn positive_ms(key: &str, value: Option<u64>, default: Duration) -> Result<Duration, Invalid> {
    match value {
        Some(0) => Err(invalid(key, "must be at least 1")),
        value => Ok(value.map_or(default, Duration::from_millis)),
    }
}

/// `server.listen` and the proxy keys of `server.api_keys_env`: a listen address that is not
/// loopback needs keys.
fn listen_and_keys(
    server: &ServerSection,
    env: Env<'_>,
) -> Result<(SocketAddr, Vec<String>), Invalid> {
    let text = server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen: SocketAddr = text.parse().map_err(|_| {
        invalid(
            "server.listen",
            format!("`{text}` is not an IP:port address (e.g. \"127.0.0.1:8080\")"),
        )
    })?;
    let api_keys: Vec<String> = server
        .api_keys_env
        .as_deref()
        .and_then(env)
        .map(|value| {
            value
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if api_keys.is_empty() && !listen.ip().is_loopback() {
        let why = match &server.api_keys_env {
            Some(var) => format!("variable `{var}` unset or empty"),
            None => "api_keys_env not set".to_string(),
        };
        return Err(invalid(
            "server.api_keys_env",
            format!("no proxy keys ({why}) but listen address {listen} is not loopback: refusing to serve without auth"),
        ));
    }
    Ok((listen, api_keys))
}

/// The key of `server.admin_key_env`; a variable named but unset is an error.
fn admin_key(server: &ServerSection, env: Env<'_>) -> Result<Option<String>, Invalid> {
    let Some(var) = &server.admin_key_env else {
        return Ok(None);
    };
    env(var)
        .map(|key| key.trim().to_string())
        .filter(|key| !key.is_empty())
        .map(Some)
        .ok_or_else(|| {
            invalid(
                "server.admin_key_env",
                format!("environment variable `{var}` is unset or empty"),
            )
        })
}

/// `[router]`: the bundle path (resolved against `base_dir`) and the router's name.
fn check_router(router: &RouterSection, base_dir: &Path) -> Result<(PathBuf, String), Invalid> {
    if router.bundle.as_os_str().is_empty() || router.bundle.to_string_lossy().trim().is_empty() {
        return Err(invalid("router.bundle", "is empty"));
    }
    if let Some(band) = router.band {
        if !(0.0..=1.0).contains(&band) {
            return Err(invalid(
                "router.band",
                format!("must be a fraction in [0, 1], got {band}"),
            ));
        }
    }
    if router.subset.as_ref().is_some_and(Vec::is_empty) {
        return Err(invalid(
            "router.subset",
            "is empty (leave it out to allow every model)",
        ));
    }
    let name = router
        .name
        .clone()
        .unwrap_or_else(|| DEFAULT_ROUTER_NAME.to_string());
    if name.is_empty() {
        return Err(invalid("router.name", "is empty"));
    }
    Ok((base_dir.join(&router.bundle), name))
}

/// The `[[models]]` catalog, or the bundle's `catalog.toml` without one; validated, and
/// without the router's own name.
fn catalog(models: Vec<ModelSpec>, bundle: &Path, router_name: &str) -> Result<Catalog, Invalid> {
    let catalog = if models.is_empty() {
        let path = bundle.join("catalog.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            invalid(
                "models",
                format!(
                    "no [[models]] in the config and cannot read {}: {e}",
                    path.display()
                ),
            )
        })?;
        Catalog::from_toml_str(&text)
            .map_err(|e| invalid("models", format!("{}: {e}", path.display())))?
    } else {
        Catalog::new(models)
    };
    catalog
        .validate()
        .map_err(|e| invalid("models", e.to_string()))?;
    if catalog.get(router_name).is_some() {
        return Err(invalid(
            "router.name",
            format!("`{router_name}` is also a catalog model name"),
        ));
    }
    Ok(catalog)
}

/// One `[[deployments]]` entry (the `i`th) as a [`Deployment`], its key read from `env`.
fn deployment(i: usize, d: DeploymentSection, env: Env<'_>) -> Result<Deployment, Invalid> {
    let key = |field: &str| format!("deployments[{i}].{field}");
    let base_url = reqwest::Url::parse(&d.base_url).map_err(|e| {
        invalid(
            key("base_url"),
            format!("`{}` is not a URL: {e}", d.base_url),
        )
    })?;
    let api_key = match &d.api_key_env {
        Some(var) => match env(var) {
            Some(value) if !value.is_empty() => Some(ApiKey::new(value)),
            _ => {
                return Err(invalid(
                    key("api_key_env"),
                    format!("environment variable `{var}` is unset or empty"),
                ))
            }
        },
        None => None,
    };
    let mut deployment = Deployment::new(d.name, d.kind, base_url, d.model);
    deployment.api_key = api_key;
    deployment.provisioned = d.provisioned;
    deployment.spillover = d.spillover;
    deployment.api_version = d.api_version;
    deployment.capacity_tpm = d.capacity_tpm;
    deployment.capacity_rpm = d.capacity_rpm;
    deployment
        .validate()
        .map_err(|e| invalid(format!("deployments[{i}]"), e.to_string()))?;
    Ok(deployment)
}

/// `[[deployments]]`: unique names, spillovers to other deployments, every deployment a
/// catalog model names configured, and at least one model with deployments.
fn check_deployments(
    sections: Vec<DeploymentSection>,
    catalog: &Catalog,
    env: Env<'_>,
) -> Result<Vec<Deployment>, Invalid> {
    let mut deployments: Vec<Deployment> = Vec::with_capacity(sections.len());
    for (i, section) in sections.into_iter().enumerate() {
        if deployments.iter().any(|x| x.name == section.name) {
            return Err(invalid(
                format!("deployments[{i}].name"),
                format!("duplicate deployment name `{}`", section.name),
            ));
        }
        deployments.push(deployment(i, section, env)?);
    }
    for (i, d) in deployments.iter().enumerate() {
        if let Some(spill) = &d.spillover {
            if spill == &d.name || !deployments.iter().any(|x| &x.name == spill) {
                return Err(invalid(
                    format!("deployments[{i}].spillover"),
                    format!("`{spill}` is not another configured deployment"),
                ));
            }
        }
    }
    for model in &catalog.models {
        if let Some(name) = model
            .deployments
            .iter()
            .find(|name| !deployments.iter().any(|d| &d.name == *name))
        {
            return Err(invalid(
                format!("models.{}.deployments", model.name),
                format!("`{name}` is not a configured [[deployments]] name"),
            ));
        }
    }
    if !catalog.models.iter().any(|m| !m.deployments.is_empty()) {
        return Err(invalid(
            "models",
            "no model lists any deployments: nothing to send requests to",
        ));
    }
    Ok(deployments)
}

/// `[dispatch]` over [`DispatchOptions::default`]; retries are capped at 10.
fn dispatch_options(d: &DispatchSection) -> Result<DispatchOptions, Invalid> {
    let defaults = DispatchOptions::default();
    let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
    Ok(DispatchOptions {
        connect_timeout: positive_ms(
            "dispatch.connect_timeout_ms",
            d.connect_timeout_ms,
            defaults.connect_timeout,
        )?,
        timeout: positive_ms("dispatch.timeout_ms", d.timeout_ms, defaults.timeout)?,
        read_timeout: positive_ms(
            "dispatch.read_timeout_ms",
            d.read_timeout_ms,
            defaults.read_timeout,
        )?,
        max_retries: d.max_retries.unwrap_or(defaults.max_retries).min(10),
        backoff: ms(d.backoff_ms, defaults.backoff),
        max_backoff: ms(d.max_backoff_ms, defaults.max_backoff),
        default_cooldown: ms(d.default_cooldown_ms, defaults.default_cooldown),
        max_cooldown: ms(d.max_cooldown_ms, defaults.max_cooldown),
        probe_interval: positive_ms(
            "dispatch.probe_interval_ms",
            d.probe_interval_ms,
            defaults.probe_interval,
        )?,
        capacity_aware: d.capacity_aware.unwrap_or(defaults.capacity_aware),
        capacity_window: positive_ms(
            "dispatch.capacity_window_ms",
            d.capacity_window_ms,
            defaults.capacity_window,
        )?,
    })
}

/// `[store]`: where, how big, what happens when full, how durable.
fn store_config(s: &StoreSection, base_dir: &Path, env: Env<'_>) -> Result<StoreConfig, Invalid> {
    let location = store_location(s, base_dir, env)?;
    let max_bytes = s.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    if max_bytes == 0 {
        return Err(invalid("store.max_bytes", "must be at least 1"));
    }
    let on_full = match &s.on_full {
        Some(v) => v
            .parse::<OnFull>()
            .map_err(|e| invalid("store.on_full", e))?,
        None => OnFull::Refuse,
    };
    let synchronous = match &s.synchronous {
        Some(v) => v
            .parse::<Synchronous>()
            .map_err(|e| invalid("store.synchronous", e))?,
        None => Synchronous::Full,
    };
    Ok(StoreConfig {
        location,
        options: StoreOptions {
            max_bytes,
            on_full,
            synchronous,
        },
    })
}

/// `store.path` or `store.url` (with `store.password_env`).
fn store_location(s: &StoreSection, base_dir: &Path, env: Env<'_>) -> Result<Location, Invalid> {
    match (&s.path, &s.url) {
        (Some(_), Some(_)) => Err(invalid(
            "store.url",
            "give `path` (SQLite) or `url` (PostgreSQL), not both",
        )),
        (None, None) => Err(invalid(
            "store.path",
            "missing: give `path` (SQLite) or `url` (PostgreSQL)",
        )),
        (Some(path), None) => {
            if path.to_string_lossy().trim().is_empty() {
                return Err(invalid("store.path", "is empty"));
            }
            if s.password_env.is_some() {
                return Err(invalid(
                    "store.password_env",
                    "only a PostgreSQL `url` takes a password",
                ));
            }
            Ok(Location::Sqlite(base_dir.join(path)))
        }
        (None, Some(url)) => {
            let password = match &s.password_env {
                None => None,
                Some(var) => Some(env(var).filter(|p| !p.is_empty()).ok_or_else(|| {
                    invalid(
                        "store.password_env",
                        format!("environment variable `{var}` is unset or empty"),
                    )
                })?),
            };
            let url =
                PostgresUrl::new(url, password).map_err(|e| invalid("store.url", e.to_string()))?;
            Ok(Location::Postgres(url))
        }
    }
}

/// Validates `[shadow]`: it needs a store, and its models are catalog models with deployments.
fn shadow_config(
    raw: ShadowSection,
    catalog: &Catalog,
    has_store: bool,
) -> Result<ShadowConfig, Invalid> {
    if !has_store {
        return Err(invalid(
            "shadow",
            "shadow answers are stored: [shadow] needs a [store] section",
        ));
    }
    if !(0.0..=1.0).contains(&raw.rate) {
        return Err(invalid(
            "shadow.rate",
            format!("must be a fraction in [0, 1], got {}", raw.rate),
        ));
    }
    if raw.models.is_empty() {
        return Err(invalid(
            "shadow.models",
            "is empty: name the models to shadow with",
        ));
    }
    for (i, name) in raw.models.iter().enumerate() {
        if raw.models[..i].contains(name) {
            return Err(invalid(
                "shadow.models",
                format!("`{name}` is listed twice"),
            ));
        }
        match catalog.get(name) {
            None => {
                return Err(invalid(
                    "shadow.models",
                    format!("`{name}` is not a catalog model"),
                ))
            }
            Some(spec) if spec.deployments.is_empty() => {
                return Err(invalid(
                    "shadow.models",
                    format!("`{name}` has no deployments"),
                ))
            }
            Some(_) => {}
        }
    }
    if !(raw.max_cost_per_day.is_finite() && raw.max_cost_per_day >= 0.0) {
        return Err(invalid(
            "shadow.max_cost_per_day",
            format!(
                "must be a non-negative number of USD, got {}",
                raw.max_cost_per_day
            ),
        ));
    }
    Ok(ShadowConfig {
        rate: raw.rate,
        models: raw.models,
        max_cost_per_day: raw.max_cost_per_day,
        queue: at_least_one("shadow.queue", raw.queue, 256)?,
        workers: at_least_one("shadow.workers", raw.workers, 4)?,
        seed: raw.seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[router]
bundle = "b"
[[models]]
name = "m"
input_price = 1.0
output_price = 2.0
context_window = 1000
deployments = ["d"]
[[deployments]]
name = "d"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
model = "m"
"#;

    fn parse(text: &str) -> Result<ServerConfig, ServerError> {
        ServerConfig::from_toml_str(text, "test.toml", Path::new("/x"), |v| {
            (v == "KEYS").then(|| "a, b".to_string())
        })
    }

    #[test]
    fn parses_a_minimal_config() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.bundle, Path::new("/x/b"));
        assert_eq!(c.deployments.len(), 1);
        assert!(c.api_keys.is_empty());
        assert!(c.access_log, "on by default");
        let quiet = parse(&format!("[server]\naccess_log = false\n{BASE}")).unwrap();
        assert!(!quiet.access_log);
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let e = parse(&BASE.replace("kind = \"openai\"", "kind = \"openai\"\nspillover = \"zz\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml") && e.contains("deployments[0].spillover") && e.contains("zz"),
            "{e}"
        );
        let e = parse(&BASE.replace("deployments = [\"d\"]", "deployments = [\"q\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("models.m.deployments") && e.contains("`q`"),
            "{e}"
        );
        let e = parse(&format!("[server]\nlisten = \"0.0.0.0:80\"\n{BASE}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.api_keys_env") && e.contains("refusing"),
            "{e}"
        );
        let e = parse(&format!("[server]\nlisten = \"nope\"\n{BASE}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.listen"), "{e}");
        let e = parse(&BASE.replace("[router]", "[router]\nmode = \"cheap\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml")
                && e.contains("mode = \"cheap\"")
                && e.contains("expected one of"),
            "{e}"
        );
        let e = parse(&BASE.replace("kind = \"openai\"", "kind = \"azure\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("deployments[0]") && e.contains("api_version"),
            "{e}"
        );
        let e = parse(&BASE.replace("[router]", "[router]\nbundel = \"x\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml") && e.contains("bundel"), "{e}");
        let e = parse(&BASE.replace("model = \"m\"", "model = \"m\"\napi_key_env = \"NOPE\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("deployments[0].api_key_env") && e.contains("NOPE"),
            "{e}"
        );
    }

    #[test]
    fn store_section() {
        let c = parse(&format!("{BASE}\n[store]\npath = \"data/s.db\"\n")).unwrap();
        let s = c.store.expect("a store");
        assert_eq!(s.location, Location::Sqlite("/x/data/s.db".into()));
        assert_eq!(s.options, StoreOptions::default());
        let c = parse(&format!(
            "{BASE}\n[store]\npath = \"/abs.db\"\nmax_bytes = 1000\non_full = \"evict_oldest\"\nsynchronous = \"normal\"\n"
        ))
        .unwrap();
        let s = c.store.expect("a store");
        assert_eq!(s.location, Location::Sqlite("/abs.db".into()));
        assert_eq!(
            s.options,
            StoreOptions {
                max_bytes: 1000,
                on_full: OnFull::EvictOldest,
                synchronous: Synchronous::Normal
            }
        );
        assert!(parse(BASE).unwrap().store.is_none());
        let c = parse(&format!(
            "{BASE}\n[store]\nurl = \"postgres://router@127.0.0.1:5432/router\"\npassword_env = \"KEYS\"\n"
        ))
        .unwrap();
        let Some(Location::Postgres(url)) = c.store.map(|s| s.location) else {
            panic!("a PostgreSQL store")
        };
        assert_eq!(
            (url.url(), url.password()),
            ("postgres://router@127.0.0.1:5432/router", Some("a, b"))
        );
        for (extra, key) in [
            ("path = \"\"", "store.path"),
            ("path = \"a\"\nmax_bytes = 0", "store.max_bytes"),
            ("path = \"a\"\non_full = \"drop\"", "store.on_full"),
            ("path = \"a\"\nsynchronous = \"off\"", "store.synchronous"),
            ("path = \"a\"\nmax_size = 1", "max_size"),
            ("max_bytes = 1", "store.path"),
            ("path = \"a\"\nurl = \"postgres://u@h/db\"", "not both"),
            ("path = \"a\"\npassword_env = \"PW\"", "store.password_env"),
            ("url = \"postgres://u:secret@h/db\"", "password_env"),
            ("url = \"mysql://u@h/db\"", "store.url"),
            (
                "url = \"postgres://u@h/db\"\npassword_env = \"UNSET_VAR\"",
                "UNSET_VAR",
            ),
        ] {
            let e = parse(&format!("{BASE}\n[store]\n{extra}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("test.toml") && e.contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn shadow_section() {
        let store = "[store]\npath = \"s.db\"\n";
        let shadow = "[shadow]\nrate = 0.5\nmodels = [\"m\"]\nmax_cost_per_day = 2.0\n";
        let c = parse(&format!("{BASE}\n{store}{shadow}")).unwrap();
        let s = c.shadow.expect("a shadow section");
        assert_eq!(
            (
                s.rate,
                s.models,
                s.max_cost_per_day,
                s.queue,
                s.workers,
                s.seed
            ),
            (0.5, vec!["m".to_string()], 2.0, 256, 4, None)
        );
        let base = BASE.replace(
            "[[deployments]]",
            "[[models]]\nname = \"idle\"\ninput_price = 1.0\noutput_price = 1.0\ncontext_window = 10\n\n[[deployments]]",
        );
        for (text, key) in [
            (
                format!("{BASE}\n{shadow}"),
                "`shadow`: shadow answers are stored",
            ),
            (
                format!("{BASE}\n{store}{}", shadow.replace("0.5", "1.5")),
                "shadow.rate",
            ),
            (
                format!("{BASE}\n{store}{}", shadow.replace("[\"m\"]", "[]")),
                "shadow.models",
            ),
            (
                format!("{BASE}\n{store}{}", shadow.replace("[\"m\"]", "[\"zz\"]")),
                "zz",
            ),
            (
                format!("{base}\n{store}{}", shadow.replace("[\"m\"]", "[\"idle\"]")),
                "no deployments",
            ),
            (
                format!("{BASE}\n{store}{}", shadow.replace("2.0", "-1.0")),
                "shadow.max_cost_per_day",
            ),
            (
                format!("{BASE}\n{store}{shadow}queue = 0\n"),
                "shadow.queue",
            ),
            (
                format!("{BASE}\n{store}{}", shadow.replace("rate = 0.5\n", "")),
                "rate",
            ),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn admin_key() {
        assert_eq!(parse(BASE).unwrap().admin_key, None);
        let c = parse(&format!("[server]\nadmin_key_env = \"KEYS\"\n{BASE}")).unwrap();
        assert_eq!(c.admin_key.as_deref(), Some("a, b"));
        let e = parse(&format!("[server]\nadmin_key_env = \"NOPE\"\n{BASE}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.admin_key_env") && e.contains("NOPE"),
            "{e}"
        );
    }

    #[test]
    fn keys_allow_public_listen() {
        let c = parse(&format!(
            "[server]\nlisten = \"0.0.0.0:80\"\napi_keys_env = \"KEYS\"\n{BASE}"
        ))
        .unwrap();
        assert_eq!(c.api_keys, vec!["a".to_string(), "b".to_string()]);
    }

    /// The config of [`BASE`], built in code.
    fn base_builder() -> ServerConfigBuilder {
        ServerConfig::builder("b")
            .model(ModelSpec::new("m", 1.0, 2.0, 1000).deployments(["d"]))
            .deployment(DeploymentSection::openai("d", "http://127.0.0.1:1/v1", "m"))
            .base_dir("/x")
            .named("test.toml")
            .env(|v| (v == "KEYS").then(|| "a, b".to_string()))
    }

    #[test]
    fn the_builder_validates_as_the_file_does() {
        let built = base_builder().build().unwrap();
        assert_eq!(format!("{built:?}"), format!("{:?}", parse(BASE).unwrap()));
        let e = base_builder()
            .deployment(DeploymentSection::openai("d", "http://127.0.0.1:2/v1", "m"))
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml") && e.contains("deployments[1].name") && e.contains("duplicate"),
            "{e}"
        );
        let e = base_builder()
            .listen("0.0.0.0:80".parse().unwrap())
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.api_keys_env") && e.contains("refusing"),
            "{e}"
        );
        let c = base_builder()
            .listen("0.0.0.0:80".parse().unwrap())
            .api_keys_env("KEYS")
            .log_format(LogFormat::Json)
            .store(StoreSection::sqlite("s.db"))
            .build()
            .unwrap();
        assert_eq!(c.api_keys, ["a", "b"]);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(
            c.store.map(|s| s.location),
            Some(Location::Sqlite("/x/s.db".into()))
        );
    }

    #[test]
    fn a_built_file_writes_as_toml_and_reads_back() {
        let builder = base_builder()
            .listen("127.0.0.1:0".parse().unwrap())
            .mode(Mode::Cost)
            .log_format(LogFormat::Json)
            .deployment(
                DeploymentSection::azure("az", "http://127.0.0.1:3", "az-model", "2024-10-21")
                    .api_key_env("KEYS"),
            )
            .dispatch(|d| d.timeout_ms = Some(1500))
            .store(StoreSection::sqlite("s.db"))
            .shadow(ShadowSection {
                rate: 0.5,
                models: vec!["m".into()],
                max_cost_per_day: 1.0,
                ..ShadowSection::default()
            });
        let text = builder.to_toml().unwrap();
        assert!(
            text.contains("log_format = \"json\"") && text.contains("mode = \"cost\""),
            "{text}"
        );
        assert_eq!(
            &ConfigFile::from_toml_str(&text, "t").unwrap(),
            builder.file()
        );
        let from_text = parse(&text).unwrap();
        assert_eq!(
            format!("{from_text:?}"),
            format!("{:?}", builder.build().unwrap())
        );
    }

    #[test]
    fn log_format_key() {
        assert_eq!(parse(BASE).unwrap().log_format, LogFormat::Logfmt);
        let c = parse(&format!("[server]\nlog_format = \"json\"\n{BASE}")).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        let e = parse(&format!("[server]\nlog_format = \"xml\"\n{BASE}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("xml") && e.contains("logfmt"), "{e}");
    }

    /// The README's full example config (the block that starts `# model-router.toml`) parses,
    /// so the documented TOML stays the TOML the server reads.
    #[test]
    fn the_readme_example_parses() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let start = readme
            .find("# model-router.toml\n")
            .expect("the README's example config");
        let end = start + readme[start..].find("```").expect("the end of the block");
        let env = |name: &str| Some(format!("value-of-{name}"));
        let c =
            ServerConfig::from_toml_str(&readme[start..end], "README.md", Path::new("/repo"), env)
                .unwrap();
        assert_eq!(c.bundle, Path::new("/repo/models/routerbench"));
        assert_eq!(c.deployments.len(), 3);
        assert_eq!(c.catalog.models.len(), 2);
        assert_eq!(c.api_keys, ["value-of-MODEL_ROUTER_API_KEYS"]);
        assert_eq!(c.dispatch.timeout, Duration::from_secs(120));
    }
}
