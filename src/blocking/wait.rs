//! How the blocking facade waits: it runs the async facade's future on the
//! calling thread. While the result is not in, the thread drives the
//! connection's I/O itself if nobody else does (`reactor::lead`), and
//! otherwise parks until the driving thread wakes it. No runtime, no extra
//! thread; one cached waker per thread.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::reactor::handle::Shared;
use crate::reactor::Lead;

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    static WAKER: Waker = Waker::from(Arc::new(Unpark(std::thread::current())));
}

/// Runs `future` to completion on this thread, or gives up after `timeout`
/// with [`Error::Timeout`] naming `operation`. With the connection's
/// `shared` state, the thread drives the connection while it waits.
pub(crate) fn block_on<T>(
    future: impl Future<Output = Result<T, Error>>,
    timeout: Option<Duration>,
    operation: &'static str,
    connection: Option<&Shared>,
) -> Result<T, Error> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut future = pin!(future);
    WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        let mut result = None;
        loop {
            if let Poll::Ready(r) = future.as_mut().poll(&mut cx) {
                return r;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout {
                    operation,
                    after: timeout.unwrap_or_default(),
                });
            }
            if let Some(shared) = connection {
                let mut done = || match future.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => {
                        result = Some(r);
                        true
                    }
                    Poll::Pending => false,
                };
                match shared.lead(deadline, &mut done) {
                    Lead::Led | Lead::Retry => {
                        if let Some(r) = result.take() {
                            return r;
                        }
                        continue;
                    }
                    Lead::Busy => {}
                }
            }
            match deadline {
                None => std::thread::park(),
                Some(deadline) => {
                    std::thread::park_timeout(deadline.saturating_duration_since(Instant::now()))
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_future_returns_at_once_and_a_stuck_one_times_out() {
        assert_eq!(
            block_on(async { Ok::<_, Error>(7) }, None, "x", None).unwrap(),
            7
        );
        let never = std::future::pending::<Result<(), Error>>();
        let err = block_on(never, Some(Duration::from_millis(20)), "waiting", None).unwrap_err();
        assert!(matches!(
            err,
            Error::Timeout {
                operation: "waiting",
                ..
            }
        ));
    }

    #[test]
    fn a_wake_from_another_thread_unparks() {
        let (tx, rx) = std::sync::mpsc::channel::<u32>();
        let waiting = std::future::poll_fn(move |cx| {
            let waker = cx.waker().clone();
            match rx.try_recv() {
                Ok(v) => Poll::Ready(Ok::<_, Error>(v)),
                Err(_) => {
                    let tx = tx.clone();
                    std::thread::spawn(move || {
                        let _ = tx.send(5);
                        waker.wake();
                    });
                    Poll::Pending
                }
            }
        });
        assert_eq!(
            block_on(waiting, Some(Duration::from_secs(5)), "x", None).unwrap(),
            5
        );
    }
}
