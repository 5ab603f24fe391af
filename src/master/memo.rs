//! A value that is slow to compute from the database, shared by the requests that ask for
//! it at about the same time: one computes it while the others wait for that result, and
//! it serves for a while in proportion to what computing it cost. However many clients
//! ask, the database does that work a bounded share of the time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Memo<T> {
    /// How long a value serves at least.
    at_least: Duration,
    /// How many times its computing time a value serves at least.
    cost_factor: u32,
    /// The last value and until when it serves; locked while a new one is computed.
    slot: Mutex<Option<(Instant, Arc<T>)>>,
}

impl<T> Memo<T> {
    pub fn new(at_least: Duration, cost_factor: u32) -> Memo<T> {
        Memo { at_least, cost_factor, slot: Mutex::new(None) }
    }

    /// The value, computed with `compute` when the last one no longer serves. An error
    /// is returned to the caller that met it and nothing is kept: the next caller tries
    /// again.
    pub fn get<E>(&self, compute: impl FnOnce() -> Result<T, E>) -> Result<Arc<T>, E> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((until, value)) = slot.as_ref() {
            if Instant::now() < *until {
                return Ok(Arc::clone(value));
            }
        }
        let started = Instant::now();
        let value = Arc::new(compute()?);
        let serves_for = self.at_least.max(started.elapsed() * self.cost_factor);
        *slot = Some((Instant::now() + serves_for, Arc::clone(&value)));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_value_serves_for_its_cost_and_callers_at_once_share_one_computation() {
        // No minimum and no cost factor: computed again for each caller.
        let fresh = Memo::new(Duration::ZERO, 0);
        let mut n = 0;
        let mut next = || {
            n += 1;
            Ok::<_, ()>(n)
        };
        for want in 1..=3 {
            assert_eq!(*fresh.get(&mut next).unwrap(), want);
        }

        // A value that took 100 ms serves for a second: eight callers at once compute it once.
        let slow = Arc::new(Memo::new(Duration::ZERO, 10));
        let computed = Arc::new(AtomicU32::new(0));
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let (slow, computed) = (Arc::clone(&slow), Arc::clone(&computed));
                std::thread::spawn(move || {
                    *slow
                        .get(|| {
                            std::thread::sleep(Duration::from_millis(100));
                            Ok::<_, ()>(computed.fetch_add(1, Ordering::SeqCst) + 1)
                        })
                        .unwrap()
                })
            })
            .collect();
        let seen: Vec<u32> = callers.into_iter().map(|c| c.join().unwrap()).collect();
        assert_eq!(computed.load(Ordering::SeqCst), 1, "{seen:?}");
        assert!(seen.iter().all(|v| *v == 1), "{seen:?}");

        // An error is not kept.
        let failing = Memo::new(Duration::from_secs(60), 10);
        assert_eq!(failing.get(|| Err::<u32, _>("database busy")).unwrap_err(), "database busy");
        assert_eq!(*failing.get(|| Ok::<_, &str>(7)).unwrap(), 7);
        assert_eq!(*failing.get(|| Ok::<_, &str>(8)).unwrap(), 7, "a value serves its minimum");
    }
}
