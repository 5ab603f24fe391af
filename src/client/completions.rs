//! `Completions`: the `complete`s of a `Client`'s concurrent small uploads, sent together
//! (`POST /api/upload/complete_batch`), so that many small uploads finishing at once cost
//! the master one request and one durable commit between them instead of one request
//! each. The master already commits concurrent writes together; what a batch saves is
//! the request around each: its connection's turn, the parsing, the answer, the log line.
//!
//! Nothing waits for a batch to fill: a caller finding no batch on its way sends one at
//! once with whatever is waiting (often only its own), and the callers arriving while it
//! is on its way wait for it to come back, then one of them sends theirs. So a lone
//! uploader's `complete` goes at once, and busy ones share a request as they share a
//! commit on the master.
//!
//! An upload the batch did not complete (its receipts make no quorum there, the master's
//! answer was lost, the master predates batches) is completed by its caller's own
//! `complete`, which takes the slow way or says why it cannot. `complete` is idempotent,
//! so one of those after a batch whose answer was lost is safe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use crate::proto::{CompleteUpload, MAX_COMPLETE_BATCH};

/// What became of one caller's upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Complete: the master said so.
    Completed,
    /// Not completed by a batch: the caller completes it with a `complete` of its own.
    Alone,
}

#[derive(Default)]
struct State {
    /// Uploads waiting for the next batch, oldest first, each with its caller's ticket.
    waiting: Vec<(u64, CompleteUpload)>,
    /// Whether a batch is on its way to the master.
    sending: bool,
    /// Outcomes not yet taken by their callers, by ticket.
    answered: HashMap<u64, Outcome>,
    next_ticket: u64,
}

/// The batching of `complete`s, shared by a `Client` and its clones.
#[derive(Default)]
pub struct Completions {
    state: Mutex<State>,
    changed: Condvar,
    /// The master answered `complete_batch` with 404 or 405: it predates it, so every
    /// upload sends its own `complete`.
    unsupported: AtomicBool,
}

impl Completions {
    pub fn new() -> Completions {
        Completions::default()
    }

    pub fn supported(&self) -> bool {
        !self.unsupported.load(Ordering::Relaxed)
    }

    pub fn mark_unsupported(&self) {
        self.unsupported.store(true, Ordering::Relaxed);
    }

    /// Completes `upload` in a batch with the others waiting, sent by `send` (which
    /// answers, for each upload in order, whether it is complete; an error leaves every
    /// one of them to its own caller). Returns once this upload's batch is answered.
    ///
    /// `send` runs on whichever caller's thread sends the batch, so it must not wait for
    /// anything that waits for a batch.
    pub fn complete<E>(
        &self,
        upload: CompleteUpload,
        send: impl Fn(Vec<CompleteUpload>) -> Result<Vec<bool>, E>,
    ) -> Outcome {
        let mut state = self.state.lock().expect("completions lock");
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting.push((ticket, upload));
        loop {
            if let Some(outcome) = state.answered.remove(&ticket) {
                return outcome;
            }
            if state.sending {
                state = self.changed.wait(state).expect("completions lock");
                continue;
            }
            state.sending = true;
            let n = state.waiting.len().min(MAX_COMPLETE_BATCH);
            let (tickets, batch): (Vec<u64>, Vec<CompleteUpload>) = state.waiting.drain(..n).unzip();
            drop(state);
            // A panic in `send` must not leave the others waiting for a batch that never
            // comes back: they are answered first, then it goes on.
            let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| send(batch)));
            let completed = match &sent {
                Ok(Ok(completed)) if completed.len() == n => Some(completed),
                _ => None,
            };
            state = self.state.lock().expect("completions lock");
            for (i, ticket) in tickets.into_iter().enumerate() {
                let done = completed.as_ref().is_some_and(|completed| completed[i]);
                state.answered.insert(ticket, if done { Outcome::Completed } else { Outcome::Alone });
            }
            state.sending = false;
            self.changed.notify_all();
            if let Err(panic) = sent {
                drop(state);
                std::panic::resume_unwind(panic);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    fn upload(n: usize) -> CompleteUpload {
        CompleteUpload { objectid: format!("upload-{n}"), receipts: Vec::new() }
    }

    #[test]
    fn a_lone_caller_sends_its_own_at_once() {
        let completions = Completions::new();
        let sent = Mutex::new(Vec::new());
        let outcome = completions.complete(upload(1), |batch| {
            sent.lock().unwrap().push(batch.len());
            Ok::<_, ()>(vec![true])
        });
        assert_eq!(outcome, Outcome::Completed);
        assert_eq!(*sent.lock().unwrap(), vec![1]);
    }

    #[test]
    fn what_the_master_did_not_complete_is_left_to_its_caller() {
        let completions = Completions::new();
        assert_eq!(completions.complete(upload(1), |_| Ok::<_, ()>(vec![false])), Outcome::Alone);
        assert_eq!(completions.complete(upload(2), |_| Err("connection reset")), Outcome::Alone);
        // An answer that does not match the batch counts for none of it.
        assert_eq!(completions.complete(upload(3), |_| Ok::<_, ()>(vec![true, true])), Outcome::Alone);
    }

    /// Callers arriving while a batch is on its way go together in the next one, each
    /// told its own outcome.
    #[test]
    fn callers_waiting_share_the_next_batch() {
        let completions = Arc::new(Completions::new());
        let batches = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
        let first_sent = Arc::new(Barrier::new(2));
        let release_first = Arc::new(Barrier::new(2));
        let send = {
            let batches = Arc::clone(&batches);
            let (first_sent, release_first) = (Arc::clone(&first_sent), Arc::clone(&release_first));
            move |batch: Vec<CompleteUpload>| {
                let ids: Vec<String> = batch.iter().map(|u| u.objectid.clone()).collect();
                let first = {
                    let mut batches = batches.lock().unwrap();
                    batches.push(ids.clone());
                    batches.len() == 1
                };
                if first {
                    first_sent.wait();
                    release_first.wait();
                }
                // Odd uploads are short of copies.
                Ok::<_, ()>(ids.iter().map(|id| !id.ends_with(['1', '3', '5'])).collect())
            }
        };
        let leader = {
            let (completions, send) = (Arc::clone(&completions), send.clone());
            std::thread::spawn(move || completions.complete(upload(0), send))
        };
        first_sent.wait();
        let followers: Vec<_> = (1..=5)
            .map(|n| {
                let (completions, send) = (Arc::clone(&completions), send.clone());
                std::thread::spawn(move || (n, completions.complete(upload(n), send)))
            })
            .collect();
        // Every follower is queued before the first batch comes back.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while completions.state.lock().unwrap().waiting.len() < 5 {
            assert!(std::time::Instant::now() < deadline, "the followers never queued");
            std::thread::yield_now();
        }
        release_first.wait();
        assert_eq!(leader.join().unwrap(), Outcome::Completed);
        for follower in followers {
            let (n, outcome) = follower.join().unwrap();
            let expected = if n % 2 == 1 { Outcome::Alone } else { Outcome::Completed };
            assert_eq!(outcome, expected, "upload {n}");
        }
        let batches = batches.lock().unwrap();
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(batches[0], vec!["upload-0"]);
        let mut second = batches[1].clone();
        second.sort();
        assert_eq!(second, (1..=5).map(|n| format!("upload-{n}")).collect::<Vec<_>>());
        assert!(completions.state.lock().unwrap().answered.is_empty());
    }

    #[test]
    fn a_batch_holds_at_most_its_bound() {
        let completions = Arc::new(Completions::new());
        let largest = Arc::new(Mutex::new(0usize));
        let threads: Vec<_> = (0..MAX_COMPLETE_BATCH * 2 + 3)
            .map(|n| {
                let (completions, largest) = (Arc::clone(&completions), Arc::clone(&largest));
                std::thread::spawn(move || {
                    completions.complete(upload(n), |batch| {
                        let mut largest = largest.lock().unwrap();
                        *largest = (*largest).max(batch.len());
                        Ok::<_, ()>(vec![true; batch.len()])
                    })
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), Outcome::Completed);
        }
        let largest = *largest.lock().unwrap();
        assert!((1..=MAX_COMPLETE_BATCH).contains(&largest), "{largest}");
    }
}
