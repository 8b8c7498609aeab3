//! Locks that a panic cannot poison for good.
//!
//! The scheduler turns a panicking delivery into a dead letter and carries on; if that panic
//! happened while a shared std lock was held (a token cache, an account's counters), every later
//! `lock().unwrap()` would panic too and turn every later message of the account into a dead
//! letter. The data behind these locks is only ever replaced whole inside one short critical
//! section (no invariant spans two statements), so the value a panicking holder left is still a
//! valid value: taking it is the right recovery.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, recovering it if a holder panicked.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `lock`, recovering it if a writer panicked.
pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `lock`, recovering it if a writer panicked.
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
