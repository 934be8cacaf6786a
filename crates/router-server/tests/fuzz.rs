//! Fuzzing, in a mode CI can afford (more cases with `PROPTEST_CASES=N`): the request parser
//! (the body's bytes into the typed request, its `router` overrides and its conversation, as
//! the chat handler reads them) and the bundle loader (a shipped bundle with one file cut, flipped or replaced) must
//! answer every input with a value or an error, never a panic; the parser's errors are 400s.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};

mod common;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A message: mostly chat-shaped (known roles, string or part contents, tool calls), with any
/// JSON where a field may be wrong.
fn message() -> impl Strategy<Value = Value> {
    let role = prop_oneof![
        Just(json!("user")),
        Just(json!("system")),
        Just(json!("assistant")),
        Just(json!("tool")),
        any_json(),
    ];
    let part = prop_oneof![
        ".{0,20}".prop_map(|t| json!({"type": "text", "text": t})),
        Just(json!({"type": "image_url", "image_url": {"url": "data:"}})),
        any_json(),
    ];
    let content = prop_oneof![
        ".{0,40}".prop_map(Value::String),
        prop::collection::vec(part, 0..3).prop_map(Value::Array),
        any_json(),
    ];
    (role, content, prop::option::of(any_json())).prop_map(|(role, content, calls)| {
        let mut m = json!({"role": role, "content": content});
        if let Some(calls) = calls {
            m["tool_calls"] = calls;
        }
        m
    })
}

/// A chat body: each known field present or not, right-ish or any JSON.
fn chat_body() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::collection::vec(message(), 0..5),
        prop::option::of(any_json()),
        prop::option::of(prop_oneof![any::<u32>().prop_map(Value::from), any_json()]),
        prop::option::of(any_json()),
        prop::option::of(prop_oneof![
            Just(json!({"mode": "cost", "band": 0.1})),
            Just(json!({"subset": ["a", 1]})),
            any_json(),
        ]),
    )
        .prop_map(|(messages, tools, max_tokens, stream, router)| {
            let mut body = Map::new();
            body.insert("model".into(), json!("model-router"));
            body.insert("messages".into(), Value::Array(messages));
            for (key, value) in [
                ("tools", tools),
                ("max_tokens", max_tokens),
                ("stream", stream),
                ("router", router),
            ] {
                if let Some(value) = value {
                    body.insert(key.into(), value);
                }
            }
            body
        })
}

/// What the chat handler does with a body before routing (parse it into the typed request,
/// read its overrides and its conversation): never a panic, 400 or Ok.
fn parse(body: &[u8]) -> Result<(), TestCaseError> {
    let headers = axum::http::HeaderMap::new();
    let read = catch_unwind(AssertUnwindSafe(move || {
        let request = router_server::ChatRequest::from_slice(body)?;
        request.overrides(&headers)?;
        let _ = request.forwarded();
        Ok::<_, router_server::ApiError>(request.conversation(6))
    }));
    match read {
        Err(_) => Err(TestCaseError::fail("the parser panicked")),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            prop_assert_eq!(e.status().as_u16(), 400);
            prop_assert!(!e.to_string().is_empty());
            Ok(())
        }
    }
}

#[test]
fn the_request_parser_answers_every_body() {
    let mut runner = TestRunner::new(Config::with_cases(cases(512)));
    runner
        .run(&chat_body(), |body| {
            parse(Value::Object(body).to_string().as_bytes())
        })
        .expect("chat-shaped bodies");
    // Arbitrary bytes go to the parser as they are.
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..256), |bytes| {
            parse(&bytes)
        })
        .expect("arbitrary bytes");
}

/// How one bundle file is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// Cut at this fraction of its length.
    Cut(f64),
    /// One byte XOR-ed at this fraction of its length.
    Flip(f64, u8),
    /// Replaced by these bytes.
    Replace(Vec<u8>),
}

fn damage() -> impl Strategy<Value = (usize, Damage)> {
    let how = prop_oneof![
        (0.0..1.0f64).prop_map(Damage::Cut),
        ((0.0..1.0f64), 1..=255u8).prop_map(|(at, x)| Damage::Flip(at, x)),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Replace),
    ];
    (0..3usize, how)
}

const FILES: [&str; 3] = ["router.json", "head.safetensors", "tokenizer.json"];

#[test]
fn the_bundle_loader_refuses_damaged_bundles_without_panicking() {
    let shipped = common::bundle();
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let originals: Vec<Vec<u8>> = FILES
        .iter()
        .map(|f| std::fs::read(shipped.join(f)).unwrap())
        .collect();
    let mut runner = TestRunner::new(Config::with_cases(cases(64)));
    runner
        .run(&damage(), |(file, how)| {
            let mut bytes = originals[file].clone();
            match how {
                Damage::Cut(at) => bytes.truncate((at * bytes.len() as f64) as usize),
                Damage::Flip(at, x) => {
                    let i = ((at * bytes.len() as f64) as usize).min(bytes.len() - 1);
                    bytes[i] ^= x;
                }
                Damage::Replace(new) => bytes = new,
            }
            let path = dir.path().join(FILES[file]);
            std::fs::write(&path, &bytes).unwrap();
            let loaded = catch_unwind(|| load_and_score(dir.path()));
            std::fs::write(&path, &originals[file]).unwrap();
            prop_assert!(loaded.is_ok(), "the loader panicked on {}", FILES[file]);
            Ok(())
        })
        .expect("damaged bundles");
}

/// Loads the bundle and, when it loads, scores a prompt (a flipped weight may still load).
fn load_and_score(dir: &Path) {
    if let Ok(router) = router_core::Router::load(dir) {
        let _ = router.score_batch(&["Hello!"]);
    }
}
