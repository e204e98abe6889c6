// spate patch: glommio imported this module from membarrier-rs, where `heavy` was a
// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` system call (or an mprotect trick) and
// `light` only a compiler fence. The system call interrupts every other CPU running one of
// the process's threads each time an executor goes to sleep: 3.7 % of spate's CPU under
// load. Both sides are now SeqCst fences: the sleeper stores `should_notify`, calls
// `heavy`, then looks for work; a producer publishes work, calls `light` (in
// `SleepNotifier::notify`), then reads `should_notify`. Either the sleeper sees the work
// or the producer sees the sleeper and writes its eventfd. See SPATE_PATCH.md.

use core::sync::atomic;

/// The barrier on the notifying side, before it reads whether the target sleeps.
#[inline]
pub(crate) fn light() {
    atomic::fence(atomic::Ordering::SeqCst)
}

/// The barrier on the sleeping side, after it announces that it sleeps.
#[inline]
pub(crate) fn heavy() {
    atomic::fence(atomic::Ordering::SeqCst)
}
