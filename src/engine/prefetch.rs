//! A hint to the CPU to start loading a household's cache lines before the engine reads them.
//!
//! At 100 000 households the state (640 bytes each) is larger than the last-level cache, so
//! a queued event released by the watermark finds its household in memory, not in cache: a
//! ~100 ns miss per line, one after another. The queue knows which households come next (a
//! released bucket is sorted), so the drain asks for the next entries' lines while it works
//! on the current one, and the misses overlap instead of adding up.

/// Asks for the cache lines at `offsets` (bytes, multiples of 64) from `base`. Only a hint:
/// it never faults, never changes memory, and does nothing on other architectures.
#[inline(always)]
pub(crate) fn lines<T>(base: &T, offsets: &[usize]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = base as *const T as *const i8;
        for &o in offsets {
            // SAFETY: PREFETCHT0 is a hint: it does not fault on any address and has no effect
            // on program state; the address is inside (or just past) `base`, a live reference.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(o)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, offsets);
}
