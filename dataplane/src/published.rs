//! A value replaced whole by configuration and read by every worker on
//! every packet: readers never see half of it and never wait for a writer.
//!
//! The writer builds the new value completely (validating it first, so a
//! bad config changes nothing), then swaps an `Arc` under a lock held for
//! the swap alone, and bumps a generation counter. Each worker holds a
//! [`Reader`] that caches its own `Arc` and, per packet or per batch, only
//! loads the generation (one atomic load, no shared-cache-line writes);
//! when it changed, it takes the lock for the time of an `Arc` clone. A
//! worker keeps using the old value until its next `current()`, and the old
//! value lives until the last worker let go of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The shared slot (one per kind of table).
#[derive(Debug)]
pub struct Published<T> {
    generation: AtomicU64,
    value: RwLock<Arc<T>>,
}

impl<T> Published<T> {
    pub fn new(value: T) -> Published<T> {
        Published {
            generation: AtomicU64::new(0),
            value: RwLock::new(Arc::new(value)),
        }
    }

    /// Replaces the value; readers pick it up at their next `current()`.
    pub fn publish(&self, value: T) {
        let new = Arc::new(value);
        // A poisoned lock means a reader panicked while cloning an Arc,
        // which cannot leave the Arc half-written: carry on.
        let mut slot = self.value.write().unwrap_or_else(|e| e.into_inner());
        *slot = new;
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The value now (an `Arc` clone: for control-plane use).
    pub fn load(&self) -> Arc<T> {
        self.value.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many times the value was replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A per-worker reader.
    pub fn reader(self: &Arc<Self>) -> Reader<T> {
        let generation = self.generation();
        Reader {
            cached: self.load(),
            generation,
            shared: self.clone(),
        }
    }
}

/// One worker's handle on a [`Published`] value.
#[derive(Debug)]
pub struct Reader<T> {
    shared: Arc<Published<T>>,
    cached: Arc<T>,
    generation: u64,
}

impl<T> Reader<T> {
    /// The current value: the cached one unless a newer one was published.
    pub fn current(&mut self) -> &T {
        let g = self.shared.generation();
        if g != self.generation {
            // Read the generation before the value: if a publish lands in
            // between, we hold the newer value under an older generation and
            // simply reload next time.
            self.cached = self.shared.load();
            self.generation = g;
        }
        &self.cached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_whole_values() {
        // Every published value is internally consistent (all elements equal);
        // readers racing with the writer must never see a mix.
        let p = Arc::new(Published::new(vec![0u64; 64]));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let mut r = p.reader();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let v = r.current();
                        assert!(v.iter().all(|&x| x == v[0]), "torn value");
                        assert!(v[0] >= seen, "went back in time");
                        seen = v[0];
                    }
                    seen
                })
            })
            .collect();
        for i in 1..=2000u64 {
            p.publish(vec![i; 64]);
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        let mut r = p.reader();
        assert_eq!(r.current()[0], 2000);
        assert_eq!(p.generation(), 2000);
    }
}
