//! A global allocator that records the largest single Rust allocation, for
//! tests that feed crafted files to loaders: a size read unchecked from a
//! header shows up as one huge allocation. A test binary opts in with
//! `#[global_allocator] static A: LargestAllocation = LargestAllocation;`.
//! [`catch_panic`] turns a loader's panic into the message to report.
//! libtorch's own allocations bypass it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest allocation a crafted file may cause: well above what the
/// fixtures need, far below what a size read from a crafted header asks.
pub const ALLOCATION_BOUND: usize = 256 << 20;

/// Records the largest allocation since the last [`reset`].
pub struct LargestAllocation;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// Forgets the allocations so far.
pub fn reset() {
    LARGEST.store(0, Ordering::Relaxed);
}

/// The largest single allocation since the last [`reset`], in bytes.
pub fn largest() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

// SAFETY: every call forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f`, catching a panic: `Err(its message)` if it panicked.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}
