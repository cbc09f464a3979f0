//! The host's memory allocator: jemalloc instead of the C library's.
//!
//! A request allocates and frees many small objects in wasmtime's
//! component-model bookkeeping, hyper and tokio, on several threads; with
//! glibc's allocator that was ~8 % of the host's CPU (`malloc`, `_int_free`,
//! `malloc_consolidate`). jemalloc made a chained read ~13 % and a 404 from
//! the gateway ~4 % cheaper in interleaved runs, for ~6–9 MiB more resident
//! memory (BENCHMARKS.md). mimalloc was as fast but doubled the resident set.

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Returns the memory freed while loading to the kernel. Compiling
/// components (a cache miss: the first start after a build) allocates and
/// frees tens of MiB, which the allocator would otherwise keep in its arenas
/// until their pages decay: a start that compiled served the chained read
/// at ~120 MiB resident without this, ~86 MiB with it (~62 MiB when every
/// component came from the cache).
pub fn release_startup_heap() {
    #[cfg(not(target_env = "msvc"))]
    {
        // SAFETY: `arena.4096.purge` (4096 is `MALLCTL_ARENAS_ALL`: every
        // arena) takes no value and returns none (null pointers, zero
        // length); it only hands unused pages back.
        let status = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"arena.4096.purge".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if status != 0 {
            tracing::debug!("jemalloc's arena purge failed (error {status})");
        }
    }
}
