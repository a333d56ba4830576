//! Keeping resident memory small and flat.
//!
//! The sidecar's working set is small, but a poll of a large running operation parses a few
//! megabytes of JSON and frees them again. With glibc's default of up to 8 malloc arenas per
//! core, those short-lived peaks stay resident as fragmented free memory. Two arenas are
//! plenty for a daemon with two worker threads, and handing free pages back after a large poll
//! keeps the RSS near the live data.

/// Limits glibc to two malloc arenas. Call once, before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns free heap pages to the operating system (after a poll that parsed a lot of JSON).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator already considers free.
    unsafe {
        libc::malloc_trim(0);
    }
}
