//! Keeping resident memory small and flat.
//!
//! The sidecar's live data is small (a few MB), but every poll of running operations reads and
//! parses their full JSON (~200 KB for 50 links) and frees it again. glibc keeps freed memory
//! resident until it is trimmed, so without help the RSS settles at the poll's transient
//! high-water mark plus fragmentation, not at the live data. Three measures, each measured by
//! the `memory` benchmark: two malloc arenas (plenty for two worker threads; the default is up
//! to 8 per core), large buffers served by `mmap` so they go back to the system when freed,
//! and a trim of free heap pages after every few MB of transient data rather than once per poll.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Transient bytes (response bodies and what is parsed from them) between two trims.
const TRIM_EVERY_BYTES: usize = 2 * 1024 * 1024;

static SINCE_TRIM: AtomicUsize = AtomicUsize::new(0);

/// Tunes glibc's allocator. Call once, before any thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // A fixed threshold also turns off glibc's dynamic one, which would otherwise rise to
        // the size of the first freed response body and move every later body onto the heap.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

/// Counts `bytes` of short-lived data just freed (e.g. a parsed response body) and returns
/// free heap pages to the system once enough has passed through since the last trim.
pub fn transient_freed(bytes: usize) {
    let total = SINCE_TRIM.fetch_add(bytes, Ordering::Relaxed) + bytes;
    if total >= TRIM_EVERY_BYTES {
        SINCE_TRIM.store(0, Ordering::Relaxed);
        release_free_memory();
    }
}

/// Returns free heap pages to the operating system.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator already considers free.
    unsafe {
        libc::malloc_trim(0);
    }
}
