//! The shadow workers: once the client's answer has gone out, each queued [`ShadowJob`] is sent
//! to the `[shadow]` models through the same dispatcher and their answers are stored, linked to
//! the original exchange (see [`crate::shadow`]).

use std::sync::{Arc, Weak};
use std::time::Instant;

use axum::body::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use router_dispatch::DispatchRequest;
use router_store::{now_ms, NewCompletion, Usage, ROUTER_OWNER};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::record::{cost_of, insert};
use crate::shadow::{Original, ShadowJob, Shadows};
use crate::state::AppState;

/// Starts `shadow.workers` tasks on the current tokio runtime (once; later calls do nothing).
/// They hold the state weakly and stop when the server's state is gone.
pub(crate) fn start(state: &Arc<AppState>) {
    let Some(shadows) = state.shadows() else {
        return;
    };
    let Some(receiver) = shadows.take_receiver() else {
        return;
    };
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    for _ in 0..shadows.workers() {
        tokio::spawn(work(Arc::downgrade(state), receiver.clone()));
    }
}

/// `body`, then — once it has ended, not if it is dropped before — `job` queued: the shadow
/// leaves after the client has its complete answer.
pub(crate) fn then_shadow<S, E>(
    body: S,
    state: Arc<AppState>,
    job: Option<ShadowJob>,
) -> impl Stream<Item = Result<Bytes, E>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    let mut pending = Some((state, job));
    body.chain(stream::poll_fn(move |_| {
        if let Some((state, Some(job))) = pending.take() {
            if let Some(shadows) = state.shadows() {
                shadows.submit(&state.metrics, job);
            }
        }
        std::task::Poll::Ready(None)
    }))
}

async fn work(state: Weak<AppState>, receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<ShadowJob>>>) {
    loop {
        let job = receiver.lock().await.recv().await;
        let (Some(job), Some(state)) = (job, state.upgrade()) else {
            return;
        };
        run(&state, job).await;
    }
}

/// Stores the original if needed, then asks each shadow model in turn.
async fn run(state: &AppState, job: ShadowJob) {
    let Some(shadows) = state.shadows() else {
        return;
    };
    let targets: Vec<String> = shadows.targets(&job.answered_by).cloned().collect();
    if !shadows.budget_left() {
        state
            .metrics()
            .shadow_dropped("budget", targets.len() as u64);
        return;
    }
    let original = match job.original {
        Original::Stored(ref id) => id.clone(),
        Original::Unstored(ref record) => {
            match insert(state.store(), state.metrics(), (**record).clone()).await {
                Ok(inserted) => inserted.id,
                Err(why) => {
                    let why = why.header_value();
                    eprintln!("model-router: shadow: storing the original failed: {why}");
                    state
                        .metrics()
                        .shadow_dropped("error", targets.len() as u64);
                    return;
                }
            }
        }
    };
    let body = job.shadow_body();
    for model in &targets {
        if !shadows.budget_left() {
            state.metrics().shadow_dropped("budget", 1);
            continue;
        }
        match ask(state, shadows, &job, &body, model, &original).await {
            Ok(()) => state.metrics().shadow_sent(),
            Err(why) => {
                eprintln!("model-router: shadow to `{model}` failed: {why}");
                state.metrics().shadow_dropped("error", 1);
            }
        }
    }
}

/// A successful chat completion read within the dispatch timeout, or why there is none.
async fn read_completion(
    state: &AppState,
    dispatched: router_dispatch::Dispatched,
) -> Result<Map<String, Value>, String> {
    let deployment = dispatched.deployment;
    let status = dispatched.response.status();
    if !status.is_success() {
        return Err(format!("`{deployment}` answered {status}"));
    }
    let read = dispatched.response.bytes();
    let bytes = tokio::time::timeout(state.dispatcher().options().timeout, read)
        .await
        .map_err(|_| format!("`{deployment}` did not finish its answer in time"))?
        .map_err(|e| format!("`{deployment}` broke off its answer: {e}"))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(o)) if o.get("choices").is_some_and(Value::is_array) => Ok(o),
        _ => Err(format!("`{deployment}` answered no chat completion")),
    }
}

/// One shadow answer: paid for (the budget), then stored.
async fn ask(
    state: &AppState,
    shadows: &Shadows,
    job: &ShadowJob,
    body: &Value,
    model: &str,
    original: &str,
) -> Result<(), String> {
    let started = Instant::now();
    let spec = state
        .routing()
        .catalog()
        .get(model)
        .cloned()
        .ok_or_else(|| format!("`{model}` is not in the catalog"))?;
    let dispatched = state
        .dispatcher()
        .dispatch(DispatchRequest {
            deployments: &spec.deployments,
            body,
            spillover: None,
        })
        .await
        .map_err(|e| e.to_string())?;
    let deployment = dispatched.deployment.clone();
    let mut response = read_completion(state, dispatched).await?;
    response.insert("model".into(), Value::String(model.to_string()));
    let response = Value::Object(response);
    let usage = Usage::from_response(&response);
    let estimate = router_policy::estimated_cost(
        &spec,
        job.prompt_tokens as u64,
        spec.billed_output_tokens(None),
    );
    let cost = cost_of(&spec, usage, estimate);
    shadows.spend(&state.metrics, cost);
    let record = NewCompletion {
        id: response
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string),
        owner: ROUTER_OWNER.to_string(),
        created_at_ms: now_ms(),
        request: job.request.clone(),
        response,
        metadata: job.metadata.clone(),
        decision: None,
        model: model.to_string(),
        deployment,
        usage,
        cost_usd: cost,
        latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        shadow_of: Some(original.to_string()),
    };
    insert(state.store(), state.metrics(), record)
        .await
        .map(drop)
        .map_err(|outcome| outcome.header_value())
}
