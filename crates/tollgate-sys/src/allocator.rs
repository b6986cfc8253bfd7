//! Giving an idle thread's free heap memory back to the kernel.
//!
//! With mimalloc (feature `mimalloc`): a block freed by another thread than the one that
//! allocated it goes onto its page's cross-thread free list; the owning thread takes those
//! back only when it next allocates from that page, or collects. A tokio worker that
//! served a burst and then idles therefore keeps the burst's pages, however free they
//! are, and RSS stays up (it did: 1.4x to 2.8x the idle RSS 30 s after a burst,
//! depending on which thread happened to allocate what). `mi_collect(true)` gives them
//! back, purging at once what the unit's `MIMALLOC_PURGE_DELAY=100` (ms) would otherwise
//! keep a little longer: under load, memory freed and soon reused stays committed (an
//! immediate purge cost a fifth of the broker's CPU on a QoS 0 stream: madvise, TLB
//! shootdowns and the page faults of touching it again), and an idle broker still gives
//! everything back.
//!
//! With glibc's malloc: freed chunks stay in its arenas; `malloc_trim(0)` returns the
//! free pages of every arena to the kernel.
//!
//! Either is meant for a thread going idle, at most about once a second.

/// Frees what the allocator holds without using it: with mimalloc, this thread's heap
/// (the cross-thread frees of its pages, its empty pages and their memory, purged now
/// whatever the purge delay) and abandoned segments; with glibc,
/// the free pages of all arenas; elsewhere nothing.
pub fn collect() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: `mi_collect` takes no pointer and has no precondition; mimalloc documents
    // it as callable from any thread at any time, and it touches only the calling
    // thread's heap and (with `force`) abandoned segments, under its own locks.
    unsafe {
        libmimalloc_sys::mi_collect(true)
    }
    #[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes a size and no pointer, locks each arena itself and is
    // callable from any thread at any time (glibc's manual); its result (whether memory
    // was released) is not needed.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn collect_can_run_on_any_thread_at_any_time() {
        let kept: Vec<Vec<u8>> = (0..1000).map(|i| vec![0u8; 64 + i]).collect();
        let handle = std::thread::spawn(move || drop(kept));
        handle.join().expect("joined");
        super::collect();
        std::thread::spawn(super::collect).join().expect("joined");
    }
}
