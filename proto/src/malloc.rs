//! glibc's allocator, tuned for processes that stream bulk data through
//! HTTP/2 (tunnels) beside many small long-lived connections (sessions).
//!
//! Why: a tunnel's receive path hands each data frame on as a slice of
//! h2's read buffer, so h2 keeps allocating fresh buffers of a few hundred
//! KiB while the old ones are still being written out. With glibc's
//! defaults those land just above the (dynamic) mmap threshold or at the
//! top of a thread's heap, and every free gives the pages back to the
//! kernel (`munmap`, or `madvise` when the heap is trimmed): the next
//! buffer page-faults them in again and the kernel zeroes them. A profile
//! of a tunnel transfer showed page faults, page clearing and unmapping
//! at 10-18 % of ctl's and the agent's time. Keeping such buffers inside
//! the heaps and leaving some free space at their tops removes that:
//! measured in `apiary-bench tunnel`, alternating builds, the tunnel
//! processes' CPU per GB fell by about a third and throughput rose by
//! about 40 % (docs/performance.md). The coordinator's memory with 10,000
//! agents did not move (`apiary-bench agents`).
//!
//! A replacement allocator was measured too: mimalloc gave the same speed
//! but quadrupled the coordinator's resident memory at 10,000 agents
//! (3.2 GiB against 0.8 GiB), so the process keeps glibc's and sets two of
//! its parameters. No crate wraps `mallopt`, hence the one `unsafe` call.

/// Allocations below this come from the heap, never a private mapping
/// (glibc's default starts at 128 KiB and moves up only after frees).
const MMAP_THRESHOLD: i32 = 4 << 20;

/// Free space a heap keeps at its top before giving pages back (glibc's
/// default is 128 KiB, or twice the dynamic mmap threshold).
const TRIM_THRESHOLD: i32 = 16 << 20;

/// Sets the parameters above. Call once, first thing in `main`. Does
/// nothing where the C library is not glibc.
pub fn tune_for_streaming() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only changes allocator parameters; it takes plain
    // integers, touches no memory of ours and is safe to call at any time
    // (glibc takes its own locks). A failure (returns 0) leaves glibc's
    // defaults, which are correct, only slower: nothing to report.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
