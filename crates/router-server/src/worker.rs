//! The scorer: model inference on a dedicated thread, batching concurrent prompts.
//!
//! Inference is CPU-bound and synchronous (candle), so it must not run on the async runtime's
//! threads. One `std::thread` owns the [`Router`]; requests reach it through a bounded queue.
//! The thread blocks for the first queued prompt, then drains whatever else is already waiting,
//! up to [`Scorer::spawn`]'s `max_batch` prompts or `batch_tokens` estimated tokens, and scores
//! them in one `score_batch` call. Under light load a batch is one prompt (no added latency);
//! under heavy load batches fill up, which is where batching pays. Each caller gets its own
//! scores back through a oneshot channel. When the queue is full, [`Scorer::score`] fails at
//! once ([`ScoreError::Busy`]) instead of queueing without bound.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};

use router_core::{Prediction, Router};
use tokio::sync::oneshot;

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
    prompt: String,
    reply: oneshot::Sender<Result<Prediction, ScoreError>>,
}

/// A handle to the scorer thread; clone it freely. The thread stops when every handle is gone.
#[derive(Clone)]
pub struct Scorer {
    queue: SyncSender<Job>,
}

impl Scorer {
    /// Starts the scorer thread, which owns `router`.
    pub fn spawn(
        router: Router,
        max_batch: usize,
        batch_tokens: usize,
        queue: usize,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        std::thread::Builder::new()
            .name("router-scorer".into())
            .spawn(move || run(router, rx, max_batch.max(1), batch_tokens.max(1)))?;
        Ok(Scorer { queue: tx })
    }

    /// Scores one prompt: one predicted quality per bundle column and, when the bundle has an
    /// output-length head, one predicted output length per column.
    pub async fn score(&self, prompt: String) -> Result<Prediction, ScoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Job { prompt, reply })
            .map_err(|e| match e {
                TrySendError::Full(_) => ScoreError::Busy,
                TrySendError::Disconnected(_) => ScoreError::Stopped,
            })?;
        answer.await.map_err(|_| ScoreError::Stopped)?
    }
}

fn run(router: Router, rx: Receiver<Job>, max_batch: usize, batch_tokens: usize) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let mut tokens = router_policy::estimate_tokens(&first.prompt);
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    let t = router_policy::estimate_tokens(&job.prompt);
                    if tokens.saturating_add(t) > batch_tokens {
                        carry = Some(job);
                        break;
                    }
                    tokens = tokens.saturating_add(t);
                    batch.push(job);
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        let prompts: Vec<&str> = batch.iter().map(|j| j.prompt.as_str()).collect();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            router.predict_batch(&prompts)
        }));
        match result {
            Ok(Ok(scores)) if scores.len() == batch.len() => {
                for (job, s) in batch.into_iter().zip(scores) {
                    let _ = job.reply.send(Ok(s));
                }
            }
            Ok(Ok(scores)) => {
                let message = format!("{} scores for {} prompts", scores.len(), prompts.len());
                fail(batch, message)
            }
            Ok(Err(e)) => fail(batch, e.to_string()),
            Err(_) => fail(batch, "the model panicked".to_string()),
        }
    }
}

fn fail(batch: Vec<Job>, message: String) {
    for job in batch {
        let _ = job.reply.send(Err(ScoreError::Model(message.clone())));
    }
}
