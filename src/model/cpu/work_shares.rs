//! How the threads of a [`super::team::Team`] share out the items of one call
//! (the weight rows of a product): each thread starts on an even, contiguous
//! share and takes it a chunk at a time; a thread that runs out takes the
//! upper half of what another thread has left (work stealing).
//!
//! Why: the small products of a decode step end with one thread waiting for
//! the other, and both ways of handing out rows from one shared counter cost
//! something. Guided chunks (a shrinking share of what remains) start a new
//! stream of weight rows at each claim and left the threads unbalanced by a
//! last chunk; even shares claimed whole were faster on a quiet machine but
//! left a thread waiting for the whole share of one that was descheduled.
//! Here a thread streams its own contiguous share unless the other falls
//! behind, and a descheduled thread leaves at most one chunk behind it.
//! Measured on 2 cores (2026-12-05, the policies in alternate rounds of one
//! process against the same bandwidth probe): batch-1 decoding ran ~4% (bf16)
//! and ~6% (f32 at the AVX2 tier) faster than with whole even shares, which
//! had run 2–8% faster than guided chunks of at least 256 rows.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of a slot's next item and of its end.
const INDEX_BITS: u32 = 28;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

/// The most items a call can share out (the rest of a slot holds its tag).
pub const MAX_ITEMS: usize = 1 << INDEX_BITS;

/// One thread's remaining items of a call, `[next, end)`, and the call's tag,
/// packed in one word so that its owner taking a chunk from the front and a
/// thief taking the back half are both a single compare-and-swap. On its own
/// cache line: the owner updates it once per chunk.
#[repr(align(64))]
struct Slot(AtomicU64);

fn pack(tag: u8, next: usize, end: usize) -> u64 {
    (u64::from(tag) << (2 * INDEX_BITS)) | ((next as u64) << INDEX_BITS) | end as u64
}

fn unpack(word: u64) -> (u8, usize, usize) {
    (
        (word >> (2 * INDEX_BITS)) as u8,
        ((word >> INDEX_BITS) & INDEX_MASK) as usize,
        (word & INDEX_MASK) as usize,
    )
}

/// Thread `index`'s even share of `items` among `threads`.
pub fn even_share(index: usize, threads: usize, items: usize) -> Range<usize> {
    items * index / threads..items * (index + 1) / threads
}

/// The threads' slots for the calls of one team run.
pub struct WorkShares {
    slots: Box<[Slot]>,
}

impl WorkShares {
    pub fn new(threads: usize) -> Self {
        WorkShares {
            slots: (0..threads.max(1))
                .map(|_| Slot(AtomicU64::new(pack(u8::MAX, 0, 0))))
                .collect(),
        }
    }

    /// Slot `index`'s word for call `tag` of `items` items, set to its even
    /// share first where it still holds an earlier call's (by its owner or
    /// by the first thief to look, whichever comes first). Tags only need
    /// to tell consecutive calls apart: no thread starts a call before every
    /// thread has finished the one before.
    fn current(&self, index: usize, tag: u8, items: usize) -> u64 {
        let slot = &self.slots[index].0;
        let mut word = slot.load(Ordering::Acquire);
        loop {
            if unpack(word).0 == tag {
                return word;
            }
            let share = even_share(index, self.slots.len(), items);
            let fresh = pack(tag, share.start, share.end);
            match slot.compare_exchange_weak(word, fresh, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return fresh,
                Err(now) => word = now,
            }
        }
    }

    /// The next chunk (at most `chunk` items) for thread `me` in call `tag`
    /// of `items` items (fewer than [`MAX_ITEMS`]): from the front of its own
    /// share, else from the back half it takes of another thread's remainder
    /// (leaving an owner its last chunk); `None` when nothing is left to take.
    pub fn next(&self, me: usize, tag: u8, items: usize, chunk: usize) -> Option<Range<usize>> {
        debug_assert!(items < MAX_ITEMS);
        let chunk = chunk.max(1);
        loop {
            let front = self.take(me, tag, items, |next, end| {
                let taken = (next + chunk).min(end);
                (next < end).then_some(((taken, end), next..taken))
            });
            if front.is_some() {
                return front;
            }
            let stolen = (1..self.slots.len())
                .map(|offset| (me + offset) % self.slots.len())
                .find_map(|victim| {
                    self.take(victim, tag, items, |next, end| {
                        let middle = next + (end - next) / 2;
                        (end > next + chunk).then_some(((next, middle), middle..end))
                    })
                })?;
            // Nobody takes from an empty slot, so this store races with no
            // thief; the stolen items are then taken a chunk at a time, and
            // can be stolen back.
            self.slots[me]
                .0
                .store(pack(tag, stolen.start, stolen.end), Ordering::Release);
        }
    }

    /// Takes items from slot `index` in call `tag`: `split(next, end)` gives
    /// the slot's new `(next, end)` and the items taken, or `None` to leave
    /// it; retried until the compare-and-swap holds.
    fn take(
        &self,
        index: usize,
        tag: u8,
        items: usize,
        split: impl Fn(usize, usize) -> Option<((usize, usize), Range<usize>)>,
    ) -> Option<Range<usize>> {
        let slot = &self.slots[index].0;
        let mut word = self.current(index, tag, items);
        loop {
            let (_, next, end) = unpack(word);
            let ((next, end), taken) = split(next, end)?;
            match slot.compare_exchange_weak(
                word,
                pack(tag, next, end),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(taken),
                Err(now) => word = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_pack_and_unpack() {
        let word = pack(200, 12_345_678, MAX_ITEMS - 1);
        assert_eq!(unpack(word), (200, 12_345_678, MAX_ITEMS - 1));
    }

    #[test]
    fn alone_a_thread_takes_its_share_then_steals_the_rest() {
        let shares = WorkShares::new(2);
        let mut taken = Vec::new();
        while let Some(range) = shares.next(0, 1, 100, 16) {
            taken.push(range);
        }
        // Its own half in chunks, then halves of thread 1's remainder while
        // they exceed a chunk, then (its own again) the rest.
        assert_eq!(taken[0], 0..16);
        assert_eq!(taken[3], 48..50);
        assert_eq!(taken[4], 75..91);
        let mut all: Vec<usize> = taken.iter().flat_map(Range::clone).collect();
        // Thread 1's last chunk is left to thread 1.
        while let Some(range) = shares.next(1, 1, 100, 16) {
            all.extend(range);
        }
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        // The next call starts from even shares again.
        assert_eq!(shares.next(1, 2, 10, 16), Some(5..10));
    }

    #[test]
    fn threads_racing_take_every_item_exactly_once() {
        for threads in [2, 3, 4] {
            let shares = WorkShares::new(threads);
            for (tag, items) in [(0u8, 1000usize), (1, 7), (2, 0), (3, 4097)] {
                let seen: Vec<Vec<usize>> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..threads)
                        .map(|me| {
                            let shares = &shares;
                            s.spawn(move || {
                                let mut mine = Vec::new();
                                while let Some(r) = shares.next(me, tag, items, 3) {
                                    mine.extend(r);
                                }
                                mine
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).collect()
                });
                let mut all: Vec<usize> = seen.concat();
                all.sort_unstable();
                assert_eq!(
                    all,
                    (0..items).collect::<Vec<_>>(),
                    "{threads} threads, {items} items"
                );
            }
        }
    }
}
