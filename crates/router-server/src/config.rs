//! The server's TOML config: `[server]`, `[router]`, `[dispatch]`, `[store]`, `[shadow]`,
//! `[[models]]`, `[[deployments]]`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use router_dispatch::{ApiKey, Deployment, DeploymentKind, DispatchOptions};
use router_policy::{Catalog, Mode};
use router_store::{Location, OnFull, PostgresUrl, StoreOptions, Synchronous, DEFAULT_MAX_BYTES};
use serde::Deserialize;

use crate::ServerError;

/// The default request body limit: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The default name under which the router itself is addressed (`"model": "model-router"`).
pub const DEFAULT_ROUTER_NAME: &str = "model-router";
/// The default cap on client connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// A validated server config. Build it with [`ServerConfig::load`] (a file, keys from the
/// process environment) or [`ServerConfig::from_toml_str`] (any text and environment).
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
    /// `server.access_log`: one line per chat request on stderr (default on).
    pub access_log: bool,
    /// `server.access_log_path`: the file the access log is appended to (relative paths
    /// resolve against the config's directory); `None`: stderr.
    pub access_log_path: Option<PathBuf>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    router: RawRouter,
    #[serde(default)]
    dispatch: RawDispatch,
    store: Option<RawStore>,
    shadow: Option<RawShadow>,
    #[serde(default)]
    #[allow(dead_code)]
    models: Vec<toml::Table>,
    #[serde(default)]
    deployments: Vec<RawDeployment>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    api_keys_env: Option<String>,
    admin_key_env: Option<String>,
    max_body_bytes: Option<usize>,
    max_batch: Option<usize>,
    batch_tokens: Option<usize>,
    queue: Option<usize>,
    access_log: Option<bool>,
    access_log_path: Option<String>,
    max_connections: Option<usize>,
    header_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouter {
    bundle: String,
    name: Option<String>,
    mode: Option<String>,
    band: Option<f64>,
    subset: Option<Vec<String>>,
    recent_turns: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDispatch {
    timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    read_timeout_ms: Option<u64>,
    max_retries: Option<u32>,
    backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    default_cooldown_ms: Option<u64>,
    max_cooldown_ms: Option<u64>,
    probe_interval_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<String>,
    url: Option<String>,
    password_env: Option<String>,
    max_bytes: Option<u64>,
    on_full: Option<String>,
    synchronous: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    rate: f64,
    models: Vec<String>,
    max_cost_per_day: f64,
    queue: Option<usize>,
    workers: Option<usize>,
    seed: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    name: String,
    kind: DeploymentKind,
    base_url: String,
    model: String,
    api_key_env: Option<String>,
    #[serde(default)]
    provisioned: bool,
    spillover: Option<String>,
    api_version: Option<String>,
}

impl ServerConfig {
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
        let bad = |key: &str, reason: String| ServerError::Config {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ServerError::ConfigSyntax {
            file: file.to_string(),
            reason: e.to_string().trim_end().to_string(),
        })?;

        let listen_text = raw.server.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            bad(
                "server.listen",
                format!("`{listen_text}` is not an IP:port address (e.g. \"127.0.0.1:8080\")"),
            )
        })?;
        let mut api_keys = Vec::new();
        if let Some(var) = &raw.server.api_keys_env {
            if let Some(value) = env(var) {
                api_keys = value
                    .split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect();
            }
        }
        if api_keys.is_empty() && !listen.ip().is_loopback() {
            return Err(bad(
                "server.api_keys_env",
                format!(
                    "no proxy keys ({}) but listen address {listen} is not loopback: refusing to serve without auth",
                    match &raw.server.api_keys_env {
                        Some(var) => format!("variable `{var}` unset or empty"),
                        None => "api_keys_env not set".to_string(),
                    }
                ),
            ));
        }
        let positive =
            |key: &str, v: Option<usize>, default: usize| -> Result<usize, ServerError> {
                match v {
                    Some(0) => Err(bad(key, "must be at least 1".into())),
                    Some(n) => Ok(n),
                    None => Ok(default),
                }
            };
        let max_body_bytes = positive(
            "server.max_body_bytes",
            raw.server.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
        )?;
        let max_batch = positive("server.max_batch", raw.server.max_batch, 32)?;
        let batch_tokens = positive("server.batch_tokens", raw.server.batch_tokens, 16_384)?;
        let queue = positive("server.queue", raw.server.queue, 1024)?;
        let max_connections = positive(
            "server.max_connections",
            raw.server.max_connections,
            DEFAULT_MAX_CONNECTIONS,
        )?;
        let header_timeout = Duration::from_millis(raw.server.header_timeout_ms.unwrap_or(10_000));
        let body_timeout = Duration::from_millis(raw.server.body_timeout_ms.unwrap_or(30_000));

        if raw.router.bundle.trim().is_empty() {
            return Err(bad("router.bundle", "is empty".into()));
        }
        let bundle = base_dir.join(&raw.router.bundle);
        let mode = match &raw.router.mode {
            Some(m) => m
                .parse::<Mode>()
                .map_err(|e| bad("router.mode", e.to_string()))?,
            None => Mode::Balanced,
        };
        if let Some(band) = raw.router.band {
            if !(0.0..=1.0).contains(&band) {
                return Err(bad(
                    "router.band",
                    format!("must be a fraction in [0, 1], got {band}"),
                ));
            }
        }
        if let Some(subset) = &raw.router.subset {
            if subset.is_empty() {
                return Err(bad(
                    "router.subset",
                    "is empty (leave it out to allow every model)".into(),
                ));
            }
        }
        let router_name = raw
            .router
            .name
            .clone()
            .unwrap_or_else(|| DEFAULT_ROUTER_NAME.to_string());
        if router_name.is_empty() {
            return Err(bad("router.name", "is empty".into()));
        }

        let catalog = if raw.models.is_empty() {
            let path = bundle.join("catalog.toml");
            let text = std::fs::read_to_string(&path).map_err(|e| {
                bad(
                    "models",
                    format!(
                        "no [[models]] in the config and cannot read {}: {e}",
                        path.display()
                    ),
                )
            })?;
            Catalog::from_toml_str(&text)
                .map_err(|e| bad("models", format!("{}: {e}", path.display())))?
        } else {
            Catalog::from_toml_str(text).map_err(|e| bad("models", e.to_string()))?
        };
        catalog
            .validate()
            .map_err(|e| bad("models", e.to_string()))?;
        if catalog.get(&router_name).is_some() {
            return Err(bad(
                "router.name",
                format!("`{router_name}` is also a catalog model name"),
            ));
        }

        let mut deployments = Vec::new();
        for (i, d) in raw.deployments.into_iter().enumerate() {
            let key = |field: &str| format!("deployments[{i}].{field}");
            if deployments.iter().any(|x: &Deployment| x.name == d.name) {
                return Err(bad(
                    &key("name"),
                    format!("duplicate deployment name `{}`", d.name),
                ));
            }
            let base_url = reqwest::Url::parse(&d.base_url).map_err(|e| {
                bad(
                    &key("base_url"),
                    format!("`{}` is not a URL: {e}", d.base_url),
                )
            })?;
            let api_key = match &d.api_key_env {
                Some(var) => match env(var) {
                    Some(value) if !value.is_empty() => Some(ApiKey::new(value)),
                    _ => {
                        return Err(bad(
                            &key("api_key_env"),
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
            deployment
                .validate()
                .map_err(|e| bad(&format!("deployments[{i}]"), e.to_string()))?;
            deployments.push(deployment);
        }
        for (i, d) in deployments.iter().enumerate() {
            if let Some(spill) = &d.spillover {
                if spill == &d.name || !deployments.iter().any(|x| &x.name == spill) {
                    return Err(bad(
                        &format!("deployments[{i}].spillover"),
                        format!("`{spill}` is not another configured deployment"),
                    ));
                }
            }
        }
        for model in &catalog.models {
            for name in &model.deployments {
                if !deployments.iter().any(|d| &d.name == name) {
                    return Err(bad(
                        &format!("models.{}.deployments", model.name),
                        format!("`{name}` is not a configured [[deployments]] name"),
                    ));
                }
            }
        }
        if !catalog.models.iter().any(|m| !m.deployments.is_empty()) {
            return Err(bad(
                "models",
                "no model lists any deployments: nothing to send requests to".into(),
            ));
        }

        let defaults = DispatchOptions::default();
        let ms = |v: Option<u64>, d: Duration| v.map(Duration::from_millis).unwrap_or(d);
        let dispatch = DispatchOptions {
            connect_timeout: ms(raw.dispatch.connect_timeout_ms, defaults.connect_timeout),
            timeout: ms(raw.dispatch.timeout_ms, defaults.timeout),
            read_timeout: ms(raw.dispatch.read_timeout_ms, defaults.read_timeout),
            max_retries: raw
                .dispatch
                .max_retries
                .unwrap_or(defaults.max_retries)
                .min(10),
            backoff: ms(raw.dispatch.backoff_ms, defaults.backoff),
            max_backoff: ms(raw.dispatch.max_backoff_ms, defaults.max_backoff),
            default_cooldown: ms(raw.dispatch.default_cooldown_ms, defaults.default_cooldown),
            max_cooldown: ms(raw.dispatch.max_cooldown_ms, defaults.max_cooldown),
            probe_interval: ms(raw.dispatch.probe_interval_ms, defaults.probe_interval),
        };
        for (key, value) in [
            ("dispatch.timeout_ms", dispatch.timeout),
            ("dispatch.connect_timeout_ms", dispatch.connect_timeout),
            ("dispatch.read_timeout_ms", dispatch.read_timeout),
            ("dispatch.probe_interval_ms", dispatch.probe_interval),
            ("server.header_timeout_ms", header_timeout),
            ("server.body_timeout_ms", body_timeout),
        ] {
            if value.is_zero() {
                return Err(bad(key, "must be at least 1".into()));
            }
        }

        let admin_key = match &raw.server.admin_key_env {
            None => None,
            Some(var) => Some(
                env(var)
                    .map(|key| key.trim().to_string())
                    .filter(|key| !key.is_empty())
                    .ok_or_else(|| {
                        bad(
                            "server.admin_key_env",
                            format!("environment variable `{var}` is unset or empty"),
                        )
                    })?,
            ),
        };
        let store = match raw.store {
            None => None,
            Some(s) => {
                let location =
                    store_location(&s, base_dir, &env).map_err(|(key, reason)| bad(key, reason))?;
                let max_bytes = s.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
                if max_bytes == 0 {
                    return Err(bad("store.max_bytes", "must be at least 1".into()));
                }
                let on_full = match &s.on_full {
                    Some(v) => v.parse::<OnFull>().map_err(|e| bad("store.on_full", e))?,
                    None => OnFull::Refuse,
                };
                let synchronous = match &s.synchronous {
                    Some(v) => v
                        .parse::<Synchronous>()
                        .map_err(|e| bad("store.synchronous", e))?,
                    None => Synchronous::Full,
                };
                Some(StoreConfig {
                    location,
                    options: StoreOptions {
                        max_bytes,
                        on_full,
                        synchronous,
                    },
                })
            }
        };

        let shadow = match raw.shadow {
            None => None,
            Some(s) => Some(
                shadow_config(s, &catalog, store.is_some())
                    .map_err(|(key, reason)| bad(key, reason))?,
            ),
        };

        Ok(ServerConfig {
            file: file.to_string(),
            source: None,
            listen,
            api_keys,
            admin_key,
            max_body_bytes,
            max_batch,
            batch_tokens,
            queue,
            access_log: raw.server.access_log.unwrap_or(true),
            access_log_path: raw.server.access_log_path.map(|p| base_dir.join(p)),
            max_connections,
            header_timeout,
            body_timeout,
            bundle,
            router_name,
            mode,
            band: raw.router.band,
            subset: raw.router.subset,
            recent_turns: raw.router.recent_turns.unwrap_or(6),
            catalog,
            deployments,
            dispatch,
            store,
            shadow,
        })
    }
}

/// `store.path` or `store.url` (with `store.password_env`); an error is (the key, why).
fn store_location(
    s: &RawStore,
    base_dir: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Location, (&'static str, String)> {
    match (&s.path, &s.url) {
        (Some(_), Some(_)) => Err(("store.url", "give `path` (SQLite) or `url` (PostgreSQL), not both".into())),
        (None, None) => Err(("store.path", "missing: give `path` (SQLite) or `url` (PostgreSQL)".into())),
        (Some(path), None) => {
            if path.trim().is_empty() {
                return Err(("store.path", "is empty".into()));
            }
            if s.password_env.is_some() {
                return Err(("store.password_env", "only a PostgreSQL `url` takes a password".into()));
            }
            Ok(Location::Sqlite(base_dir.join(path)))
        }
        (None, Some(url)) => {
            let password = match &s.password_env {
                None => None,
                Some(var) => Some(env(var).filter(|p| !p.is_empty()).ok_or_else(|| {
                    ("store.password_env", format!("environment variable `{var}` is unset or empty"))
                })?),
            };
            let url = PostgresUrl::new(url, password).map_err(|e| ("store.url", e.to_string()))?;
            Ok(Location::Postgres(url))
        }
    }
}

/// Validates `[shadow]`; an error is (the key, why).
fn shadow_config(
    raw: RawShadow,
    catalog: &Catalog,
    has_store: bool,
) -> Result<ShadowConfig, (&'static str, String)> {
    if !has_store {
        return Err((
            "shadow",
            "shadow answers are stored: [shadow] needs a [store] section".into(),
        ));
    }
    if !(0.0..=1.0).contains(&raw.rate) {
        return Err((
            "shadow.rate",
            format!("must be a fraction in [0, 1], got {}", raw.rate),
        ));
    }
    if raw.models.is_empty() {
        return Err((
            "shadow.models",
            "is empty: name the models to shadow with".into(),
        ));
    }
    for (i, name) in raw.models.iter().enumerate() {
        if raw.models[..i].contains(name) {
            return Err(("shadow.models", format!("`{name}` is listed twice")));
        }
        match catalog.get(name) {
            None => return Err(("shadow.models", format!("`{name}` is not a catalog model"))),
            Some(spec) if spec.deployments.is_empty() => {
                return Err(("shadow.models", format!("`{name}` has no deployments")))
            }
            Some(_) => {}
        }
    }
    if !(raw.max_cost_per_day.is_finite() && raw.max_cost_per_day >= 0.0) {
        return Err((
            "shadow.max_cost_per_day",
            format!(
                "must be a non-negative number of USD, got {}",
                raw.max_cost_per_day
            ),
        ));
    }
    let at_least_one = |key: &'static str, v: Option<usize>, default: usize| match v {
        Some(0) => Err((key, "must be at least 1".to_string())),
        v => Ok(v.unwrap_or(default)),
    };
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
        assert!(e.contains("router.mode"), "{e}");
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
        assert_eq!((url.url(), url.password()), ("postgres://router@127.0.0.1:5432/router", Some("a, b")));
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
            ("url = \"postgres://u@h/db\"\npassword_env = \"UNSET_VAR\"", "UNSET_VAR"),
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
}
