//! Catalog parsing and validation: every invalid catalog fails with a message naming the problem.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use router_policy::{
    Capabilities, Catalog, Mode, ModelSpec, Policy, PolicyDefaults, PolicyError,
    DEFAULT_EXPECTED_OUTPUT_TOKENS,
};

fn cols(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn entry(name: &str, extra: &str) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\ninput_price = 1.0\noutput_price = 2.0\n\
         context_window = 8192\n{extra}\n"
    )
}

fn toml_err(text: &str) -> String {
    Catalog::from_toml_str(text).unwrap_err().to_string()
}

#[test]
fn a_whole_server_config_parses_as_a_catalog() {
    let text = r#"
        [server]
        listen = "127.0.0.1:8080"

        [router]
        bundle = "models/mini"
        mode = "balanced"

        [[deployments]]
        name = "gpt4-ptu"
        kind = "azure"
        provisioned = true

        [[models]]
        name = "gpt-4-1106-preview"
        input_price = 10.0
        output_price = 30.0
        context_window = 128000
        expected_output_tokens = 300
        tools = true
        vision = false
        json_schema = true
        reasoning = false
        deployments = ["gpt4-ptu"]

        [[models]]
        name = "mixtral"
        input_price = 0
        output_price = 1
        context_window = 32768
    "#;
    let catalog = Catalog::from_toml_str(text).unwrap();
    assert_eq!(catalog.models.len(), 2);
    let gpt4 = catalog.get("gpt-4-1106-preview").unwrap();
    assert_eq!(
        *gpt4,
        ModelSpec::new("gpt-4-1106-preview", 10.0, 30.0, 128_000)
            .expected_output_tokens(300)
            .capabilities(Capabilities {
                tools: true,
                json_schema: true,
                ..Capabilities::default()
            })
            .deployments(["gpt4-ptu"])
    );
    // Integer prices are accepted; optional keys take their defaults.
    let mixtral = catalog.get("mixtral").unwrap();
    assert_eq!(*mixtral, ModelSpec::new("mixtral", 0.0, 1.0, 32_768));
    assert_eq!(
        mixtral.expected_output_tokens,
        DEFAULT_EXPECTED_OUTPUT_TOKENS
    );
    assert_eq!(mixtral.capabilities, Capabilities::default());
    assert!(mixtral.deployments.is_empty());
    assert!(catalog.get("nope").is_none());
}

#[test]
fn catalog_round_trips_through_toml() {
    let catalog = Catalog::from_toml_str(&(entry("a", "tools = true") + &entry("b", ""))).unwrap();
    let text = toml::to_string(&catalog).unwrap();
    assert!(text.contains("tools = true"), "{text}");
    assert!(!text.contains("capabilities"), "flat keys on disk: {text}");
    assert_eq!(Catalog::from_toml_str(&text).unwrap(), catalog);
}

#[test]
fn unknown_key_in_a_model_entry_is_an_error() {
    let msg = toml_err(&entry("a", "input_prize = 3.0"));
    assert!(msg.starts_with("invalid catalog: "), "{msg}");
    assert!(msg.contains("unknown field `input_prize`"), "{msg}");
    // A [models.capabilities] sub-table is not the chosen shape: also an unknown key.
    let msg = toml_err(&entry("a", "[models.capabilities]\ntools = true"));
    assert!(msg.contains("unknown field `capabilities`"), "{msg}");
}

#[test]
fn missing_or_mistyped_keys_are_errors() {
    let msg = toml_err("[[models]]\nname = \"a\"\ninput_price = 1.0\noutput_price = 1.0\n");
    assert!(msg.contains("missing field `context_window`"), "{msg}");
    let msg = toml_err(&entry("a", "tools = \"yes\""));
    assert!(
        msg.starts_with("invalid catalog: ") && msg.contains("tools"),
        "{msg}"
    );
    let msg = toml_err(
        "[[models]]\nname = \"a\"\ninput_price = 1.0\noutput_price = 1.0\ncontext_window = -5\n",
    );
    assert!(
        msg.starts_with("invalid catalog: ") && msg.contains("context_window"),
        "{msg}"
    );
    assert!(toml_err("[[models]\n").starts_with("invalid catalog: "));
}

#[test]
fn negative_or_non_finite_prices_are_errors() {
    let text =
        "[[models]]\nname = \"a\"\ninput_price = -1.0\noutput_price = 1.0\ncontext_window = 10\n";
    assert_eq!(
        toml_err(text),
        "invalid catalog: model `a`: input_price must be a finite number >= 0 \
         (USD per 1M tokens), got -1"
    );
    for bad in ["nan", "inf", "-inf", "-0.5"] {
        let text = format!(
            "[[models]]\nname = \"b\"\ninput_price = 1.0\noutput_price = {bad}\ncontext_window = 10\n"
        );
        let msg = toml_err(&text);
        assert!(
            msg.contains("model `b`: output_price must be a finite number >= 0"),
            "{msg}"
        );
    }
    // Built in code, the same check runs in Policy::new.
    let err = Policy::new(
        Catalog::new(vec![ModelSpec::new("a", 1.0, f64::NAN, 10)]),
        cols(&["a"]),
        PolicyDefaults::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PolicyError::InvalidPrice {
                field: "output_price",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn zero_context_window_is_an_error() {
    let text =
        "[[models]]\nname = \"a\"\ninput_price = 1.0\noutput_price = 1.0\ncontext_window = 0\n";
    assert_eq!(
        toml_err(text),
        "invalid catalog: model `a`: context_window must be at least 1 token, got 0"
    );
}

#[test]
fn duplicate_names_are_an_error() {
    let msg = toml_err(&(entry("a", "") + &entry("b", "") + &entry("a", "")));
    assert_eq!(msg, "invalid catalog: model `a` is listed more than once");
}

#[test]
fn empty_names_and_empty_catalogs_are_errors() {
    assert_eq!(
        toml_err(&entry("  ", "")),
        "invalid catalog: a model entry has an empty name"
    );
    assert_eq!(
        toml_err("[server]\nport = 1\n"),
        "invalid catalog: it has no [[models]] entries"
    );
}

#[test]
fn catalog_entry_the_bundle_does_not_predict_is_an_error() {
    let catalog = Catalog::from_toml_str(&(entry("a", "") + &entry("gpt-5", ""))).unwrap();
    let err = Policy::new(catalog, cols(&["a", "b"]), PolicyDefaults::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the catalog entry names `gpt-5`, which the router bundle does not predict \
         (bundle columns: a, b)"
    );
}

#[test]
fn subset_naming_an_unknown_model_is_an_error() {
    let catalog = Catalog::from_toml_str(&entry("a", "")).unwrap();
    let err = Policy::new(
        catalog.clone(),
        cols(&["a", "b"]),
        PolicyDefaults::default().subset(["a", "c"]),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the deployment subset names `c`, which the router bundle does not predict \
         (bundle columns: a, b)"
    );
    // A column without a catalog entry is a valid subset member (it is just never eligible).
    assert!(Policy::new(
        catalog.clone(),
        cols(&["a", "b"]),
        PolicyDefaults::default().subset(["b"])
    )
    .is_ok());
    let err = Policy::new(
        catalog,
        cols(&["a"]),
        PolicyDefaults::default().subset(Vec::<String>::new()),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the deployment subset is empty: it would exclude every model"
    );
}

#[test]
fn invalid_defaults_and_columns_are_errors() {
    let catalog = Catalog::from_toml_str(&entry("a", "")).unwrap();
    let err = Policy::new(
        catalog.clone(),
        cols(&["a"]),
        PolicyDefaults::new(Mode::Cost).band(2.0),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "band must be a fraction in [0, 1], got 2");
    let err = Policy::new(catalog, cols(&["a", "b", "a"]), PolicyDefaults::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid bundle columns: `a` appears more than once"
    );
}

#[test]
fn policy_exposes_its_parts() {
    let catalog = Catalog::from_toml_str(&entry("a", "")).unwrap();
    let p = Policy::new(
        catalog.clone(),
        cols(&["b", "a"]),
        PolicyDefaults::new(Mode::Cost),
    )
    .unwrap();
    assert_eq!(p.columns(), ["b", "a"]);
    assert_eq!(p.catalog(), &catalog);
    assert_eq!(p.defaults().mode, Mode::Cost);
}
