//! `select!` arms that are rarely enabled, kept off the task's own state.
//!
//! A task future is as large as everything it may hold across an await at
//! once, and every idle session keeps three of them in memory (its link,
//! pump and client reader). A `select!` arm holds its future's full state
//! even while disabled, so arms that only some sessions use (upstream
//! acks, slow-consumer policies, a linger deadline) cost every session
//! their size. [`optional`] boxes such a future only while it is enabled:
//! a disabled arm costs one pointer (docs/BENCHMARKS.md, idle memory).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A future that lives on the heap while enabled, and never resolves
/// while disabled.
pub(crate) struct Optional<F>(Option<Pin<Box<F>>>);

/// The arm for `f`, or an arm that never fires for `None`. Build `f`
/// lazily (`cond.then(|| ...)`), so a disabled arm allocates nothing.
pub(crate) fn optional<F: Future>(f: Option<F>) -> Optional<F> {
    Optional(f.map(Box::pin))
}

impl<F: Future> Future for Optional<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match &mut self.0 {
            Some(f) => f.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn a_disabled_arm_never_fires_and_an_enabled_one_does() {
        assert_eq!(optional(None::<std::future::Ready<u8>>).now_or_never(), None);
        assert_eq!(optional(Some(std::future::ready(7u8))).now_or_never(), Some(7));
    }

    #[test]
    fn an_arm_costs_one_pointer_whatever_its_future() {
        let big = async {
            let buf = [0u8; 512];
            std::future::ready(()).await;
            buf.len()
        };
        assert!(std::mem::size_of_val(&big) >= 512);
        let arm = optional(Some(big));
        assert_eq!(std::mem::size_of_val(&arm), std::mem::size_of::<usize>());
    }
}
