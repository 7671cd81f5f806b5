//! A team of threads for the fused decode step: every thread of libtorch's team
//! runs the same step, each computes its share of the weight rows of every
//! matrix–vector product, and they meet at a spinning barrier after each.
//!
//! Why not fork–join per product: a decode step of a small model is ~120
//! products of a few hundred microseconds each, and waking a sleeping worker
//! for each one costs a noticeable share of the step. The team is started once
//! per step; between products the threads spin for a fraction of a microsecond.

use std::cell::{Cell, UnsafeCell};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use super::gemv::{untranspose, GemvInput, WeightSlice};
use super::torch_threads;
use super::work_shares::{even_share, WorkShares, MAX_ITEMS};

/// Weight rows a thread takes at a time in a product (see [`WorkShares`]):
/// with 32, batch-1 decoding ran 2–5% faster than with 16, 64 or 128 rows,
/// in alternate rounds of one process (2026-12-05, 2 cores, bf16 and AVX2 f32).
const PRODUCT_CHUNK_ROWS: usize = 32;

/// A reusable barrier whose waiters spin (then yield, if a thread is late).
struct SpinBarrier {
    arrived: AtomicUsize,
    generation: AtomicUsize,
    size: usize,
}

impl SpinBarrier {
    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.size {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            spins += 1;
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// f32 scratch that the team's threads write in disjoint parts and read whole
/// after a barrier.
struct Scratch(Box<[UnsafeCell<f32>]>);

// SAFETY: access is coordinated by the team's barrier (see `Team::product`).
unsafe impl Sync for Scratch {}

impl Scratch {
    fn new(len: usize) -> Self {
        Scratch((0..len).map(|_| UnsafeCell::new(0.0)).collect())
    }

    /// SAFETY: no other thread may touch `range` until the next barrier.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, range: Range<usize>) -> &mut [f32] {
        let cells = &self.0[range];
        std::slice::from_raw_parts_mut(cells.as_ptr() as *mut f32, cells.len())
    }

    /// SAFETY: no thread may write `range` while the slice lives.
    unsafe fn read(&self, range: Range<usize>) -> &[f32] {
        let cells = &self.0[range];
        std::slice::from_raw_parts(cells.as_ptr() as *const f32, cells.len())
    }
}

/// Scratch buffers kept from one run to the next: a decode step needs ~400 KB
/// of them for a small model's unembedding, and allocating (and zeroing) them
/// on every step cost tens of microseconds.
static SCRATCH_POOL: Mutex<Vec<Scratch>> = Mutex::new(Vec::new());

/// Two buffers of at least `len` floats, from the pool where it has them.
fn take_scratch(len: usize) -> [Scratch; 2] {
    let mut pool = SCRATCH_POOL
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    pool.retain(|s| s.0.len() >= len);
    let mut next = || pool.pop().unwrap_or_else(|| Scratch::new(len));
    [next(), next()]
}

fn return_scratch(buffers: [Scratch; 2]) {
    if let Ok(mut pool) = SCRATCH_POOL.lock() {
        pool.clear();
        pool.extend(buffers);
    }
}

/// Which threads of the team read a shared result.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Readers {
    /// Every thread: the result feeds the next step of the run.
    All,
    /// Only the leader: the run's final result, which the others would
    /// copy for nothing (a small model's logits are ~200 KB).
    Leader,
}

/// What the threads of one run share.
struct Shared {
    barrier: SpinBarrier,
    /// Who takes which items of a call.
    shares: WorkShares,
    /// Two buffers used in turn: a product writes one while threads may still
    /// be reading the other's previous result.
    scratch: [Scratch; 2],
}

/// One thread's view of the team.
pub struct Team<'a> {
    index: usize,
    size: usize,
    shared: &'a Shared,
    turn: Cell<usize>,
    /// The tag of this thread's next shared-out call (every thread makes the
    /// same calls in the same order).
    call: Cell<u8>,
}

/// Runs `op` on every thread of libtorch's OpenMP team at once (see
/// [`torch_threads`]), with `scratch_len` floats of scratch (at least `m·n` of
/// the largest product), and returns the result of the team's first thread.
///
/// libtorch's own threads, not a second pool: after a libtorch operator
/// (a prompt's forward, an embedding), its workers spin for a while, and a
/// second pool's threads would share the cores with them.
pub fn run<R: Send>(scratch_len: usize, op: impl Fn(&Team) -> R + Sync) -> Option<R> {
    // Built by the first thread to arrive, for the team's actual size.
    let shared = OnceLock::new();
    let buffers = Mutex::new(Some(take_scratch(scratch_len)));
    let first = Mutex::new(None);
    torch_threads::broadcast(|index, size| {
        let shared = shared.get_or_init(|| Shared {
            barrier: SpinBarrier {
                arrived: AtomicUsize::new(0),
                generation: AtomicUsize::new(0),
                size,
            },
            scratch: buffers
                .lock()
                .ok()
                .and_then(|mut b| b.take())
                .unwrap_or_else(|| take_scratch(scratch_len)),
            shares: WorkShares::new(size),
        });
        let team = Team {
            index,
            size,
            shared,
            turn: Cell::new(0),
            call: Cell::new(0),
        };
        let result = op(&team);
        if index == 0 {
            if let Ok(mut slot) = first.lock() {
                *slot = Some(result);
            }
        }
    });
    if let Some(shared) = shared.into_inner() {
        return_scratch(shared.scratch);
    }
    first.into_inner().ok().flatten()
}

impl Team<'_> {
    /// Whether this is the thread that does the team's one-off writes.
    pub fn is_leader(&self) -> bool {
        self.index == 0
    }

    /// `f(items, out)` over `items` items of `width` floats each, shared out
    /// as [`WorkShares`] does (an even share per thread, taken `chunk` items
    /// at a time, then stolen halves); every thread gets the whole
    /// `[items, width]`.
    pub fn split(
        &self,
        items: usize,
        width: usize,
        chunk: usize,
        f: impl Fn(Range<usize>, &mut [f32]),
    ) -> Vec<f32> {
        self.split_to(items, width, chunk, f, Readers::All)
    }

    /// [`Team::split`], where only `readers` get the result (the others an
    /// empty vector).
    fn split_to(
        &self,
        items: usize,
        width: usize,
        chunk: usize,
        f: impl Fn(Range<usize>, &mut [f32]),
        readers: Readers,
    ) -> Vec<f32> {
        let tag = self.call.get();
        self.call.set(tag.wrapping_add(1));
        let turn = self.turn.get();
        self.turn.set(1 - turn);
        let scratch = &self.shared.scratch[turn];
        let write = |range: Range<usize>| {
            // SAFETY: each thread writes only the items it took before the
            // barrier, and reads the whole after it. The buffer is written
            // again two calls later, which no thread starts before every
            // thread has passed the next call's barrier, i.e. finished this read.
            f(range.clone(), unsafe {
                scratch.part(range.start * width..range.end * width)
            });
        };
        if items < MAX_ITEMS {
            while let Some(range) = self.shared.shares.next(self.index, tag, items, chunk) {
                write(range);
            }
        } else {
            // Too many to tag (never a product's rows): even shares, no stealing.
            write(even_share(self.index, self.size, items));
        }
        self.shared.barrier.wait();
        if readers == Readers::All || self.is_leader() {
            unsafe { scratch.read(0..items * width) }.to_vec()
        } else {
            Vec::new()
        }
    }

    /// `f(items, out)` over this thread's [`even_share`] of `items` items of
    /// `width` floats each, for few items that cost the same (attention
    /// heads), where taking them one by one cost more than it balanced;
    /// every thread gets the whole `[items, width]`.
    pub fn split_even(
        &self,
        items: usize,
        width: usize,
        f: impl Fn(Range<usize>, &mut [f32]),
    ) -> Vec<f32> {
        let turn = self.turn.get();
        self.turn.set(1 - turn);
        let scratch = &self.shared.scratch[turn];
        let range = even_share(self.index, self.size, items);
        // SAFETY: as in `split`: the shares are disjoint, and the buffer is
        // read after the barrier.
        f(range.clone(), unsafe {
            scratch.part(range.start * width..range.end * width)
        });
        self.shared.barrier.wait();
        unsafe { scratch.read(0..items * width) }.to_vec()
    }

    /// `x [m, k] · Wᵀ + bias` → `[m, n]`, by [`Team::split`] over the weight rows.
    pub fn product(
        &self,
        x: &[f32],
        m: usize,
        w: WeightSlice,
        bias: Option<WeightSlice>,
        readers: Readers,
    ) -> Vec<f32> {
        let input = GemvInput::new(x, m, w);
        let n = input.outputs(w);
        let transposed = self.split_to(
            n,
            m,
            PRODUCT_CHUNK_ROWS,
            |rows, out| input.rows_into(w, rows, out),
            readers,
        );
        if transposed.is_empty() {
            return transposed;
        }
        untranspose(transposed, m, bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_gets_the_whole_product() {
        let (m, n, k) = (2, 101, 64);
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.5).collect();
        let b: Vec<f32> = (0..n).map(|j| j as f32).collect();
        let want: Vec<f32> = (0..m * n)
            .map(|i| {
                let (r, j) = (i / n, i % n);
                (0..k).map(|c| x[r * k + c] * w[j * k + c]).sum::<f32>() + b[j]
            })
            .collect();
        let got = run(2 * m * n, |team| {
            // Three products in a row exercise both scratch buffers.
            let mut last = Vec::new();
            for _ in 0..3 {
                last = team.product(
                    &x,
                    m,
                    WeightSlice::F32(&w),
                    Some(WeightSlice::F32(&b)),
                    Readers::All,
                );
            }
            last
        });
        let got = got.unwrap_or_default();
        assert_eq!(got.len(), want.len());
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() < 1e-3, "{g} vs {e}");
        }
    }

    #[test]
    fn even_shares_and_claimed_chunks_mix_and_only_the_leader_reads_a_final_result() {
        let (n, k) = (300, 32);
        let x = vec![1f32; k];
        let w: Vec<f32> = (0..n * k).map(|i| (i / k) as f32).collect();
        // Row j of `w` sums to j·k.
        let want: Vec<f32> = (0..n).map(|j| (j * k) as f32).collect();
        let seen = Mutex::new(Vec::new());
        run(2 * n, |team| {
            for round in 0..3 {
                let even = team.split_even(7 + round, 2, |items, out| {
                    for (i, pair) in items.zip(out.chunks_exact_mut(2)) {
                        pair.copy_from_slice(&[i as f32, -(i as f32)]);
                    }
                });
                let even_ok = even.len() == 2 * (7 + round)
                    && even
                        .chunks(2)
                        .enumerate()
                        .all(|(i, p)| p == [i as f32, -(i as f32)]);
                // A claimed product after an even split must still cover
                // every row once.
                let all = team.product(&x, 1, WeightSlice::F32(&w), None, Readers::All);
                let last = team.product(&x, 1, WeightSlice::F32(&w), None, Readers::Leader);
                let last_ok = if team.is_leader() {
                    last == want
                } else {
                    last.is_empty()
                };
                if let Ok(mut seen) = seen.lock() {
                    seen.push((team.index, even_ok, all == want, last_ok));
                }
            }
        });
        let seen = seen.into_inner().unwrap_or_default();
        assert_eq!(seen.len(), 3 * torch_threads::team_size().max(1));
        for (thread, even_ok, all_ok, last_ok) in seen {
            assert!(
                even_ok && all_ok && last_ok,
                "thread {thread}: {even_ok} {all_ok} {last_ok}"
            );
        }
    }
}

#[cfg(test)]
mod product_tests {
    //! The matrix–vector kernels of `gemv`, run as the fused step runs them:
    //! shared out by a team, against a plain f64 loop.

    use super::*;
    use crate::machine::cpu::{available, with_tier, CpuTier};
    use crate::model::cpu::gemv::*;

    fn reference(x: &[f32], m: usize, w: &[f32], n: usize, b: &[f32]) -> Vec<f32> {
        let k = x.len() / m;
        let mut y = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                    .sum();
                y[r * n + j] = dot as f32 + b[j];
            }
        }
        y
    }

    /// The product as the fused step computes it, by a team of libtorch's threads.
    fn product(x: &[f32], m: usize, w: WeightSlice, b: Option<WeightSlice>) -> Vec<f32> {
        let n = w.len() / (x.len() / m);
        run(m * n, |team| team.product(x, m, w, b, Readers::All)).unwrap_or_default()
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32
                    / 1000.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn every_cpu_path_matches_a_plain_loop_and_the_portable_path() {
        for (m, n, k) in [
            (1, 37, 64),
            (1, 20, 70),
            (3, 100, 70),
            (5, 33, 96),
            (8, 300, 576),
            (13, 50, 576),
        ] {
            let x = values(m * k, 1);
            let w = values(n * k, 2);
            let b = values(n, 3);
            let w16: Vec<u16> = w
                .iter()
                .map(|v| (round_bf16(*v).to_bits() >> 16) as u16)
                .collect();
            let w_rounded: Vec<f32> = w16.iter().map(|b| bf16_to_f32(*b)).collect();
            let x_rounded: Vec<f32> = x.iter().map(|v| round_bf16(*v)).collect();
            let want_f32 = reference(&x, m, &w, n, &b);
            // bf16 weights: the same products on the rounded weights and input.
            let want_bf16 = reference(&x_rounded, m, &w_rounded, n, &vec![0.0; n]);
            let both = || {
                (
                    product(&x, m, WeightSlice::F32(&w), Some(WeightSlice::F32(&b))),
                    product(&x, m, WeightSlice::Bf16(&w16), None),
                )
            };
            let portable = with_tier(CpuTier::Portable, both);
            for tier in available() {
                let (got_f32, got_bf16) = with_tier(tier, both);
                for (name, got, want, base) in [
                    ("f32", &got_f32, &want_f32, &portable.0),
                    ("bf16", &got_bf16, &want_bf16, &portable.1),
                ] {
                    assert_eq!(got.len(), want.len(), "{tier} {name} m={m} n={n} k={k}");
                    for ((g, e), p) in got.iter().zip(want).zip(base) {
                        assert!(
                            (g - e).abs() < 1e-4,
                            "{tier} {name} m={m} n={n} k={k}: {g} vs {e}"
                        );
                        assert!(
                            (g - p).abs() < 1e-4,
                            "{tier} {name} against portable: {g} vs {p}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even 1.
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round_bf16(1.0 + 1.0 / 200.0), 1.0 + 1.0 / 128.0);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
        let t = tch::Tensor::from_slice(&[1.0f32 + 1.0 / 200.0, -3.3333, 65504.7, 1e-30]);
        let torch: Vec<f32> =
            Vec::try_from(t.to_kind(tch::Kind::BFloat16).to_kind(tch::Kind::Float))
                .unwrap_or_default();
        let ours: Vec<f32> = [1.0f32 + 1.0 / 200.0, -3.3333, 65504.7, 1e-30]
            .iter()
            .map(|v| round_bf16(*v))
            .collect();
        assert_eq!(ours, torch);
    }
}
