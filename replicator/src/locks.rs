//! [`lock`]: the one way Ferry takes a `std::sync::Mutex`.
//!
//! Invariant: a panic on another thread while it held a lock never turns into a panic here. Every
//! mutex in Ferry guards state that each critical section leaves consistent before it can panic
//! (caches, counters, a recorded failure), so a poisoned lock is taken as it is. Without this, one
//! panic inside a lock would make every later request that takes it panic too (issue 9, row 3).
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The guard of `m`, poisoned or not.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_lock_poisoned_by_a_panic_is_still_taken() {
        let m = Arc::new(Mutex::new(1));
        let poisoner = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(m.is_poisoned());
        *super::lock(&m) += 1;
        assert_eq!(*super::lock(&m), 2);
    }
}
