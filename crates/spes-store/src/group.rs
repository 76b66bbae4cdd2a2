//! Group commit: journal appends that arrive together share one
//! transaction, so one fsync (SQLite) or one commit round trip
//! (PostgreSQL) serves them all.
//!
//! There is no background task and no timer. Each append joins a queue,
//! then waits for its *turn* (a fair async mutex). Whoever holds the turn
//! yields once (so that requests made ready by the same wake-up queue
//! too), then takes everything queued (its own request and every request
//! that arrived while the previous batch was committing), commits it as
//! one transaction and answers each request. A caller whose request a
//! previous turn already answered just takes the answer. So a lone
//! sequential append commits at once, alone (no delay), while appends
//! that finish together (map items, parallel branches) ride the next
//! commit together.
//!
//! A turn holder that is dropped mid-commit (its caller gave up) drops the
//! answers of the batch it took; each of those callers queues its request
//! again. Appends are idempotent by `(run, key)`, so a request whose first
//! commit did land comes back as [`crate::Appended::Existing`] with the
//! same payload.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// A journal append waiting for its commit.
#[derive(Debug)]
pub(crate) struct AppendReq {
    pub(crate) run: crate::RunId,
    pub(crate) key: String,
    pub(crate) kind: String,
    /// The payload, encoded.
    pub(crate) payload: String,
}

/// A journal append made only while a task's lease holds.
#[derive(Debug)]
pub(crate) struct FencedReq {
    pub(crate) lease: crate::queue::Lease,
    pub(crate) append: AppendReq,
}

/// The group-commit queue of fenced appends (workers).
pub(crate) type FencedAppends = GroupCommit<FencedReq, crate::Result<crate::Appended>>;

/// The group-commit queue of journal appends.
pub(crate) type Appends = GroupCommit<AppendReq, crate::Result<crate::Appended>>;

/// Most appends one transaction takes.
pub(crate) const MAX_BATCH: usize = 256;

/// Answers every append of a batch: each its own outcome, or all the
/// transaction's error.
pub(crate) fn answer_appends<I>(
    batch: Vec<Pending<I, crate::Result<crate::Appended>>>,
    outcome: crate::Result<Vec<crate::Result<crate::Appended>>>,
) {
    match outcome {
        Ok(outs) => {
            for (p, out) in batch.into_iter().zip(outs) {
                p.answer(out);
            }
        }
        Err(e) => {
            for p in batch {
                p.answer(Err(e.clone()));
            }
        }
    }
}

/// Each run's status as its last lone journal append read it inside its
/// own commit, and when that append began: what
/// [`crate::RunStore::status_read_by_commit`] answers.
#[derive(Debug, Default)]
pub(crate) struct Statuses(
    Mutex<std::collections::HashMap<crate::RunId, (crate::RunStatus, std::time::Instant)>>,
);

impl Statuses {
    /// Keeps `status` (as stored) for `run`, read by an append that began
    /// at `began`.
    pub(crate) fn saw(&self, run: crate::RunId, status: &str, began: std::time::Instant) {
        let status = status.parse::<crate::RunStatus>().ok();
        if let (Some(st), Ok(mut seen)) = (status, self.0.lock()) {
            // Bounded: a long-lived process sees many runs.
            if seen.len() > 4096 {
                seen.clear();
            }
            seen.insert(run, (st, began));
        }
    }

    /// The status the last lone append of `run` read, if it began at or
    /// after `since`.
    pub(crate) fn since(
        &self,
        run: &crate::RunId,
        since: std::time::Instant,
    ) -> Option<crate::RunStatus> {
        let seen = self.0.lock().ok()?;
        seen.get(run)
            .filter(|(_, began)| *began >= since)
            .map(|(st, _)| *st)
    }
}

/// One queued request and where its answer goes.
pub(crate) struct Pending<I, O> {
    /// The request.
    pub(crate) input: Arc<I>,
    reply: oneshot::Sender<O>,
}

impl<I, O> Pending<I, O> {
    /// Answers the request (a caller that went away is ignored).
    pub(crate) fn answer(self, out: O) {
        let _ = self.reply.send(out);
    }
}

/// A queue of requests committed in batches. See the [module docs](self).
pub(crate) struct GroupCommit<I, O> {
    queue: Mutex<VecDeque<Pending<I, O>>>,
    turn: tokio::sync::Mutex<()>,
    max_batch: usize,
    /// Batches handed to a commit so far.
    batches: std::sync::atomic::AtomicU64,
}

impl<I, O> std::fmt::Debug for GroupCommit<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

impl<I, O> GroupCommit<I, O> {
    /// A queue whose batches hold at most `max_batch` requests.
    pub(crate) fn new(max_batch: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            turn: tokio::sync::Mutex::new(()),
            max_batch: max_batch.max(1),
            batches: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Batches handed to a commit so far (one transaction each).
    pub(crate) fn batches(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn push(&self, input: Arc<I>) -> oneshot::Receiver<O> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(Pending { input, reply });
        rx
    }

    fn take(&self) -> Vec<Pending<I, O>> {
        let mut q = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = q.len().min(self.max_batch);
        q.drain(..n).collect()
    }

    /// Submits `input` and returns its answer. `commit` must answer every
    /// request of the batch it is given (one transaction for all of them).
    pub(crate) async fn submit<F, Fut>(&self, input: I, commit: F) -> O
    where
        F: Fn(Vec<Pending<I, O>>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let input = Arc::new(input);
        let mut rx = self.push(input.clone());
        loop {
            let _turn = self.turn.lock().await;
            // Let requests made ready by the same wake-up join this batch:
            // sibling futures of one task (a map's items) are polled only
            // when this one yields, and a commit may not yield (SQLite's
            // runs on the calling thread).
            tokio::task::yield_now().await;
            // Whoever held the turn before us has finished: our request was
            // answered, dropped with its batch, or is still queued.
            match rx.try_recv() {
                Ok(out) => return out,
                Err(oneshot::error::TryRecvError::Closed) => {
                    rx = self.push(input.clone());
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            // Commit batches until ours is among them (it is queued, maybe
            // behind a full batch).
            loop {
                let batch = self.take();
                if batch.is_empty() {
                    break;
                }
                self.batches
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                commit(batch).await;
                match rx.try_recv() {
                    Ok(out) => return out,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        // `commit` dropped it without an answer: ask again.
                        rx = self.push(input.clone());
                    }
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_lone_request_commits_alone_and_at_once() {
        let g = GroupCommit::<u32, u32>::new(8);
        let batches = AtomicUsize::new(0);
        let out = g
            .submit(7, |b| {
                batches.fetch_add(1, Ordering::SeqCst);
                async move {
                    assert_eq!(b.len(), 1);
                    for p in b {
                        let v = *p.input * 2;
                        p.answer(v);
                    }
                }
            })
            .await;
        assert_eq!(out, 14);
        assert_eq!(batches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_that_arrive_together_share_batches() {
        let g = Arc::new(GroupCommit::<u32, u32>::new(16));
        let batches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..100u32 {
            let (g, batches) = (g.clone(), batches.clone());
            tasks.push(tokio::spawn(async move {
                g.submit(i, |b| {
                    batches.fetch_add(1, Ordering::SeqCst);
                    async move {
                        assert!(b.len() <= 16);
                        // A commit takes a while: others queue meanwhile.
                        tokio::task::yield_now().await;
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        for p in b {
                            let v = *p.input + 1000;
                            p.answer(v);
                        }
                    }
                })
                .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), i as u32 + 1000);
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(n < 100, "100 concurrent requests took {n} commits");
        assert!(n >= 100 / 16, "batches hold at most 16: {n}");
    }

    #[tokio::test]
    async fn a_request_dropped_by_its_batch_is_asked_again() {
        let g = GroupCommit::<u32, u32>::new(8);
        let calls = AtomicUsize::new(0);
        let out = g
            .submit(5, |b| {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    for p in b {
                        if !first {
                            let v = *p.input;
                            p.answer(v);
                        }
                    }
                }
            })
            .await;
        assert_eq!(out, 5);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
