//! Ordered parallel map over sample indices on scoped std threads.
//!
//! Work items are computed on any thread in any order, but handed to the consumer strictly in
//! index order, so the output never depends on the number of threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The thread count to use for `requested` (0 = all available cores).
pub fn thread_count(requested: usize) -> usize {
    if requested > 0 {
        requested
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Compute `produce(i)` for `i in 0..n` on `threads` threads and pass each result to `consume`
/// in increasing `i`. Stops at the first error `consume` returns.
pub fn map_ordered<R, E>(
    n: usize,
    threads: usize,
    produce: impl Fn(usize) -> R + Sync,
    mut consume: impl FnMut(usize, R) -> Result<(), E>,
) -> Result<(), E>
where
    R: Send,
{
    let threads = threads.max(1);
    if threads == 1 {
        for i in 0..n {
            consume(i, produce(i))?;
        }
        return Ok(());
    }
    // Chunks keep memory bounded; each chunk is big enough that its tail is short.
    let chunk = threads * 16;
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        let slots: Vec<Mutex<Option<R>>> = (start..end).map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(start);
        std::thread::scope(|s| {
            for _ in 0..threads.min(end - start) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        break;
                    }
                    let r = produce(i);
                    *slots[i - start].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                });
            }
        });
        for (offset, slot) in slots.into_iter().enumerate() {
            let r = slot
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every index in the chunk was produced");
            consume(start + offset, r)?;
        }
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_arrive_in_order_for_any_thread_count() {
        for threads in [1, 2, 3, 8] {
            let mut seen = Vec::new();
            map_ordered(
                200,
                threads,
                |i| i * i,
                |i, r| {
                    assert_eq!(r, i * i);
                    seen.push(i);
                    Ok::<(), ()>(())
                },
            )
            .unwrap();
            assert_eq!(seen, (0..200).collect::<Vec<_>>());
        }
    }
}
