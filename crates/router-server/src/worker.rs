//! The scorer: tokenisation on the request's own task, inference where it is cheapest.
//!
//! A prompt is tokenised on the task that handles its request ([`Router::tokenize`], about a
//! microsecond per 30 tokens), so that work spreads over all of the runtime's threads; a prompt
//! longer than [`INLINE_TOKENIZE_BYTES`] is tokenised on tokio's blocking pool instead, so that
//! no runtime thread stalls on one huge request. Then, by tier:
//!
//! - **Static tier on the CPU**: the table lookup and the small head take a few microseconds,
//!   less than handing the prompt to another thread and waking the request again costs, so they
//!   run right there on the request's task; no queue, no thread.
//! - **BERT tier** (or any tier on a GPU): milliseconds of inference, which must not run on the
//!   async runtime's threads. One `std::thread` owns the batching; token ids reach it through a
//!   bounded queue. It blocks for the first queued prompt, then drains whatever else is already
//!   waiting, up to [`Scorer::spawn`]'s `max_batch` prompts or `batch_tokens` tokens, and scores
//!   them in one [`Router::predict_tokenized`] call (a prompt gets the same prediction alone or
//!   in a batch). Under light load a batch is one prompt (no added latency); under heavy load
//!   batches fill up, which is where batching pays. A prompt whose caller has gone (the client
//!   disconnected and its request was dropped) is not scored; the scorer counts it. When the
//!   queue is full, [`Scorer::score`] fails at once ([`ScoreError::Busy`]) instead of queueing
//!   without bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;

use router_core::{Encoder, Prediction, Router, TokenizedPrompt};
use tokio::sync::oneshot;

/// Prompts longer than this many bytes are tokenised on tokio's blocking pool rather than on the
/// request's task: our ASCII WordPiece path takes about 35 µs for 4 KiB, within what an async
/// task may run between two awaits; a 1 MiB body would take milliseconds.
pub const INLINE_TOKENIZE_BYTES: usize = 4096;

/// Why a prompt was not scored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScoreError {
    /// The queue is full.
    #[error("the router is overloaded (scoring queue full)")]
    Busy,
    /// The scorer thread has stopped.
    #[error("the scorer has stopped")]
    Stopped,
    /// The model failed on the batch.
    #[error("scoring failed: {0}")]
    Model(String),
}

struct Job {
    prompt: TokenizedPrompt,
    reply: oneshot::Sender<Result<Prediction, ScoreError>>,
}

/// A handle to the scorer; clone it freely. A batching thread stops when every handle is gone.
#[derive(Clone)]
pub struct Scorer {
    router: Arc<Router>,
    /// The queue to the batching thread; `None` when prompts are scored on their own task.
    batcher: Option<SyncSender<Job>>,
}

impl Scorer {
    /// Starts the scorer for `router`: a batching thread for a BERT encoder or a GPU device, none
    /// for the static tier on the CPU. `skipped` counts the prompts not scored because their
    /// caller had gone.
    pub fn spawn(
        router: Router,
        max_batch: usize,
        batch_tokens: usize,
        queue: usize,
        skipped: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let router = Arc::new(router);
        let inline = router.device().is_cpu() && matches!(router.encoder(), Encoder::Static(_));
        let batcher = match inline {
            true => None,
            false => {
                let (tx, rx) = mpsc::sync_channel(queue.max(1));
                let limits = BatchLimits {
                    prompts: max_batch.max(1),
                    tokens: batch_tokens.max(1),
                };
                let router = router.clone();
                std::thread::Builder::new()
                    .name("router-scorer".into())
                    .spawn(move || run(&router, &rx, limits, &skipped))?;
                Some(tx)
            }
        };
        Ok(Scorer { router, batcher })
    }

    /// Whether prompts are batched on a scorer thread (BERT tier or GPU) rather than scored on
    /// their request's task (static tier on the CPU).
    pub fn batches(&self) -> bool {
        self.batcher.is_some()
    }

    /// Scores one prompt: one predicted quality per bundle column and, when the bundle has an
    /// output-length head, one predicted output length per column.
    pub async fn score(&self, prompt: String) -> Result<Prediction, ScoreError> {
        let prompt = self.tokenize(prompt).await?;
        let Some(queue) = &self.batcher else {
            let mut predictions = predict(&self.router, std::slice::from_ref(&prompt))?;
            return predictions
                .pop()
                .ok_or_else(|| ScoreError::Model("no prediction for the prompt".into()));
        };
        let (reply, answer) = oneshot::channel();
        queue.try_send(Job { prompt, reply }).map_err(|e| match e {
            TrySendError::Full(_) => ScoreError::Busy,
            TrySendError::Disconnected(_) => ScoreError::Stopped,
        })?;
        answer.await.map_err(|_| ScoreError::Stopped)?
    }

    /// The prompt's token ids: on this task, or on the blocking pool for a long prompt.
    async fn tokenize(&self, prompt: String) -> Result<TokenizedPrompt, ScoreError> {
        if prompt.len() <= INLINE_TOKENIZE_BYTES {
            return self
                .router
                .tokenize(&prompt)
                .map_err(|e| ScoreError::Model(e.to_string()));
        }
        let router = self.router.clone();
        tokio::task::spawn_blocking(move || router.tokenize(&prompt))
            .await
            .map_err(|e| ScoreError::Model(format!("the tokenizer failed: {e}")))?
            .map_err(|e| ScoreError::Model(e.to_string()))
    }
}

/// How much one batch may hold.
#[derive(Debug, Clone, Copy)]
struct BatchLimits {
    prompts: usize,
    tokens: usize,
}

/// Predictions for `prompts`; a panic in the model becomes an error, not a dead thread or task.
fn predict(router: &Router, prompts: &[TokenizedPrompt]) -> Result<Vec<Prediction>, ScoreError> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        router.predict_tokenized(prompts)
    }));
    match result {
        Ok(Ok(predictions)) if predictions.len() == prompts.len() => Ok(predictions),
        Ok(Ok(predictions)) => Err(ScoreError::Model(format!(
            "{} predictions for {} prompts",
            predictions.len(),
            prompts.len()
        ))),
        Ok(Err(e)) => Err(ScoreError::Model(e.to_string())),
        Err(_) => Err(ScoreError::Model("the model panicked".to_string())),
    }
}

/// The batching thread's loop: until every [`Scorer`] handle is gone.
fn run(router: &Router, rx: &Receiver<Job>, limits: BatchLimits, skipped: &AtomicU64) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let Some(first) = still_wanted(first, skipped) else {
            continue;
        };
        let mut tokens = first.prompt.len();
        let mut batch = vec![first];
        while batch.len() < limits.prompts {
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            };
            let Some(job) = still_wanted(job, skipped) else {
                continue;
            };
            if tokens.saturating_add(job.prompt.len()) > limits.tokens {
                carry = Some(job);
                break;
            }
            tokens = tokens.saturating_add(job.prompt.len());
            batch.push(job);
        }
        let (prompts, replies): (Vec<TokenizedPrompt>, Vec<_>) =
            batch.into_iter().map(|job| (job.prompt, job.reply)).unzip();
        match predict(router, &prompts) {
            Ok(predictions) => {
                for (reply, prediction) in replies.into_iter().zip(predictions) {
                    let _ = reply.send(Ok(prediction));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// `job`, unless its caller has stopped waiting for the answer (the request was dropped, as when
/// its client disconnected): then it is counted in `skipped` and not scored.
fn still_wanted(job: Job, skipped: &AtomicU64) -> Option<Job> {
    if job.reply.is_closed() {
        skipped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    Some(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_router() -> Router {
        Router::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/routerbench"
        ))
        .expect("the shipped bundle")
    }

    /// The loop itself, on this thread: jobs queued, some of their callers gone, the queue closed;
    /// `run` returns once it has drained it.
    #[test]
    fn the_batching_loop_skips_prompts_whose_caller_has_gone_and_answers_the_rest() {
        let router = shipped_router();
        let prompts = [
            "Hello!",
            "What is 17 * 23?",
            "Prove Fermat's little theorem.",
            "Write a haiku.",
            "Sort a list in Rust.",
        ];
        let (queue, rx) = mpsc::sync_channel(prompts.len());
        let mut waiting = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let (reply, answer) = oneshot::channel();
            let job = Job {
                prompt: router.tokenize(prompt).expect("tokenize"),
                reply,
            };
            queue.send(job).expect("queue");
            match i % 2 {
                0 => waiting.push((prompt, answer)),
                _ => drop(answer),
            }
        }
        drop(queue);
        let skipped = AtomicU64::new(0);
        run(
            &router,
            &rx,
            BatchLimits {
                prompts: 2,
                tokens: 4096,
            },
            &skipped,
        );
        assert_eq!(skipped.load(Ordering::Relaxed), 2);
        for (prompt, mut answer) in waiting {
            let got = answer.try_recv().expect("answered").expect("scored");
            assert_eq!(got, router.predict(prompt).expect("predict"), "{prompt:?}");
        }
    }
}
