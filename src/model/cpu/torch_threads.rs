//! Runs Rust kernels on libtorch's own OpenMP threads.
//!
//! Between two libtorch operators, libtorch's OpenMP workers keep spinning for
//! a while before they sleep. A kernel shared out over a second pool (rayon)
//! right after a libtorch operator therefore fights those spinning workers for
//! the same cores. Handing the kernel to the same OpenMP team instead, through
//! `GOMP_parallel` (the call a `#pragma omp parallel` region compiles to),
//! keeps one set of threads busy, and the waiting workers pick the work up at
//! once.
//!
//! No crate exposes libgomp's entry points, so they are declared here. They are
//! looked up at run time in the libgomp that libtorch already loaded; with a
//! libtorch built without OpenMP the kernels run on the calling thread.

use std::any::Any;
use std::ffi::{c_int, c_uint, c_void, CStr};
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};

type ParallelFn =
    unsafe extern "C" fn(unsafe extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
type QueryFn = unsafe extern "C" fn() -> c_int;

/// libgomp's entry points.
struct Gomp {
    parallel: ParallelFn,
    thread_num: QueryFn,
    num_threads: QueryFn,
}

fn symbol(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT only searches the loaded objects.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

fn gomp() -> Option<&'static Gomp> {
    static GOMP: OnceLock<Option<Gomp>> = OnceLock::new();
    GOMP.get_or_init(|| {
        // Make sure libtorch (and with it its OpenMP runtime) is initialised.
        tch::get_num_threads();
        let parallel = symbol(c"GOMP_parallel")?;
        let thread_num = symbol(c"omp_get_thread_num")?;
        let num_threads = symbol(c"omp_get_num_threads")?;
        // SAFETY: these are libgomp's exported functions with these C signatures.
        Some(unsafe {
            Gomp {
                parallel: std::mem::transmute::<*mut c_void, ParallelFn>(parallel),
                thread_num: std::mem::transmute::<*mut c_void, QueryFn>(thread_num),
                num_threads: std::mem::transmute::<*mut c_void, QueryFn>(num_threads),
            }
        })
    })
    .as_ref()
}

/// Threads of libtorch's team for a parallel region started from this thread
/// (libtorch's thread count, which this also makes the thread's OpenMP
/// default, as libtorch's own operators do).
pub fn team_size() -> usize {
    tch::get_num_threads().max(1) as usize
}

struct Job<'f, F> {
    f: &'f F,
    gomp: &'f Gomp,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

unsafe extern "C" fn run_on_thread<F: Fn(usize, usize) + Sync>(data: *mut c_void) {
    // SAFETY: `data` is the `Job` that `broadcast` keeps alive until every
    // thread of the region has returned.
    let job = unsafe { &*(data as *const Job<F>) };
    // SAFETY: libgomp queries, called inside the region.
    let (t, n) = unsafe { ((job.gomp.thread_num)(), (job.gomp.num_threads)()) };
    // A panic must not unwind through libgomp's frames; it is carried over
    // and resumed on the calling thread.
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| {
        (job.f)(t.max(0) as usize, n.max(1) as usize)
    })) {
        if let Ok(mut slot) = job.panic.lock() {
            slot.get_or_insert(payload);
        }
    }
}

/// Runs `f(thread, threads)` on every thread of libtorch's OpenMP team at
/// once, the calling thread being thread 0, and returns when all are done.
/// Without a team (one thread, no OpenMP, or called from inside a region,
/// where OpenMP does not nest) it is `f(0, 1)` on the calling thread.
pub fn broadcast<F: Fn(usize, usize) + Sync>(f: F) {
    let size = team_size();
    let gomp = match gomp() {
        Some(g) if size > 1 => g,
        _ => return f(0, 1),
    };
    let job = Job {
        f: &f,
        gomp,
        panic: Mutex::new(None),
    };
    // SAFETY: `run_on_thread::<F>` reads `job` as a `Job<F>`, and
    // GOMP_parallel returns only after every thread has left it.
    unsafe {
        (gomp.parallel)(
            run_on_thread::<F>,
            &job as *const Job<F> as *mut c_void,
            size as c_uint,
            0,
        );
    }
    if let Some(payload) = job.panic.into_inner().ok().flatten() {
        resume_unwind(payload);
    }
}

/// Calls `f` on disjoint ranges that together cover `0..len`, one
/// contiguous range per thread of libtorch's team (only on the calling thread
/// when `len` is below `min_len`). Returns when every range is done.
pub fn for_each_part<F: Fn(Range<usize>) + Sync>(len: usize, min_len: usize, f: F) {
    if len < min_len.max(2) {
        if len > 0 {
            f(0..len);
        }
        return;
    }
    broadcast(|t, n| {
        let range = len * t / n..len * (t + 1) / n;
        if !range.is_empty() {
            f(range);
        }
    });
}

/// A mutable slice that the threads of [`for_each_part`] write through, each
/// to its own disjoint part.
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: access goes through `part`, whose callers promise disjoint ranges.
unsafe impl<T: Send> Send for SharedMut<'_, T> {}
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        SharedMut {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements in `range`.
    ///
    /// # Safety
    /// No two live results may overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, range: Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds; the caller guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn parts_cover_every_index_once() {
        tch::set_num_threads(2);
        for len in [0, 1, 2, 3, 10, 1001] {
            let hits: Vec<AtomicUsize> = (0..len).map(|_| AtomicUsize::new(0)).collect();
            for_each_part(len, 1, |r| {
                for i in r {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{len}");
        }
    }

    #[test]
    fn a_panic_inside_the_team_reaches_the_caller() {
        tch::set_num_threads(2);
        let caught = catch_unwind(|| {
            for_each_part(100, 1, |r| {
                if r.contains(&99) {
                    panic!("boom");
                }
            })
        });
        assert!(caught.is_err());
        // The team still works afterwards.
        let sum = AtomicUsize::new(0);
        for_each_part(100, 1, |r| {
            sum.fetch_add(r.len(), Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn every_thread_of_libtorchs_team_runs_once() {
        tch::set_num_threads(2);
        assert!(gomp().is_some(), "libgomp's entry points were not found");
        let seen: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
        broadcast(|t, n| {
            assert_eq!(n, 2);
            seen[t].fetch_add(1, Ordering::Relaxed);
        });
        assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
        // Nested inside a region, the inner call runs on its thread alone.
        broadcast(|_, _| broadcast(|t, n| assert_eq!((t, n), (0, 1))));
    }
}
