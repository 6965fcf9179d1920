//! Letting the async runtime watch the connection (feature `tokio`).
//!
//! By default the connection's reactor thread waits for the socket, and an
//! async task waiting for a result is woken by that thread: each batch of
//! input costs two thread wake-ups, the reactor thread's and then the
//! executor's. With the `tokio` feature, a task awaiting a result under a
//! tokio runtime drives the connection itself, as a blocking caller does
//! (see `lead`): it runs a turn that does not wait, and leaves the runtime's
//! own reactor watching the connection's poll, whose descriptor is readable
//! whenever the socket, the waker or the wake-up timer has something. The
//! input then wakes the executor's thread directly, and the task that runs
//! next reads it.
//!
//! The poll's descriptor is duplicated for the runtime, so the runtime's
//! registration outlives the reactor safely.
//!
//! The runtime wakes one task per readiness: the last one that drove. Other
//! tasks waiting on the connection are woken through their results, which
//! the driving task's turns complete. If no awaiting task drives for a
//! while (the last one's result came, and it went on to other work), the
//! reactor thread's handback check finds the connection undriven and takes
//! it back within a few milliseconds, as it does for blocking callers.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A tokio runtime without its I/O driver refused to watch a connection:
/// this process's connections leave their polls to their reactor threads.
static IO_REFUSED: AtomicBool = AtomicBool::new(false);

/// The connection's poll as a tokio runtime sees it.
pub(crate) struct RuntimeWatch {
    /// A duplicate of the poll's descriptor.
    poll_fd: OwnedFd,
    /// Registered with the first tokio runtime an async caller drove under;
    /// `None` when that failed (a runtime without I/O enabled).
    tokio: OnceLock<Option<AsyncFd<OwnedFd>>>,
}

impl RuntimeWatch {
    /// Watches `poll` (nothing is registered until a task drives).
    pub(crate) fn new(poll: &mio::Poll) -> std::io::Result<Self> {
        let poll_fd = std::os::fd::AsRawFd::as_raw_fd(poll);
        // SAFETY: the descriptor is the poll's, open for the duration of
        // this call; it is only borrowed, to be duplicated.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(poll_fd) };
        Ok(RuntimeWatch {
            poll_fd: borrowed.as_fd().try_clone_to_owned()?,
            tokio: OnceLock::new(),
        })
    }

    /// The poll as the tokio runtime the current task runs under watches
    /// it; `None` outside tokio, or when the runtime cannot watch it.
    pub(crate) fn current(&self) -> Option<Watched<'_>> {
        self.registered().map(|fd| Watched { fd })
    }

    fn registered(&self) -> Option<&AsyncFd<OwnedFd>> {
        if IO_REFUSED.load(Ordering::Relaxed) {
            return None;
        }
        tokio::runtime::Handle::try_current().ok()?;
        self.tokio
            .get_or_init(|| {
                let fd = self.poll_fd.try_clone().ok()?;
                // tokio panics when its runtime was built without I/O (no
                // `enable_io`): the reactor thread then goes on watching.
                // `with_interest` (deprecated for descriptors an `AsyncFd`
                // does not own) keeps every tokio 1.x usable; this one owns
                // its descriptor.
                #[allow(deprecated)]
                let registered = std::panic::catch_unwind(move || {
                    AsyncFd::with_interest(fd, Interest::READABLE)
                });
                if registered.is_err() {
                    // Its panic message is printed once, not per connection.
                    IO_REFUSED.store(true, Ordering::Relaxed);
                }
                registered.ok()?.ok()
            })
            .as_ref()
    }
}

/// The poll, watched by the current task's tokio runtime.
pub(crate) struct Watched<'a> {
    fd: &'a AsyncFd<OwnedFd>,
}

impl<'a> Watched<'a> {
    /// Ready when the runtime saw the poll become readable since the last
    /// [`Readiness::consumed`]; pending otherwise (the task is woken on the
    /// next readiness).
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Readiness<'a>> {
        match self.fd.poll_read_ready(cx) {
            Poll::Ready(Ok(guard)) => Poll::Ready(Readiness { guard }),
            // The runtime shut down: the reactor thread takes over.
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    }
}

/// The poll was readable: a turn takes what it had, then reports it
/// consumed.
pub(crate) struct Readiness<'a> {
    guard: tokio::io::unix::AsyncFdReadyGuard<'a, OwnedFd>,
}

impl Readiness<'_> {
    /// The turn after the readiness took every event: the runtime reports
    /// the poll again only for new ones.
    pub(crate) fn consumed(mut self) {
        self.guard.clear_ready();
    }
}

/// A timer in the connection's poll (Linux): while async callers drive,
/// nobody waits in the poll with a timeout, so the session's next deadline
/// (a heartbeat, or receive coalescing's fallback read) is armed here and
/// makes the poll readable when due, waking the runtime.
#[cfg(target_os = "linux")]
pub(crate) struct WakeupTimer {
    fd: OwnedFd,
    /// What it is armed for, if anything.
    armed: Option<std::time::Instant>,
    /// Where its millisecond grid starts (see [`WakeupTimer::arm`]).
    epoch: std::time::Instant,
}

#[cfg(target_os = "linux")]
impl WakeupTimer {
    /// A disarmed timer, registered in `registry` under `token`.
    pub(crate) fn new(registry: &mio::Registry, token: mio::Token) -> std::io::Result<Self> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: plain system call; the descriptor it returns is owned here.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        registry.register(
            &mut mio::unix::SourceFd(&fd.as_raw_fd()),
            token,
            mio::Interest::READABLE,
        )?;
        Ok(WakeupTimer {
            fd,
            armed: None,
            epoch: std::time::Instant::now(),
        })
    }

    /// Arms the timer for `deadline` (disarms it for `None`); `now` is the
    /// current time.
    ///
    /// The deadline is rounded up to the next whole millisecond of the
    /// timer's own grid. A blocking caller's wait for the same deadline
    /// fires as late: its poll's timeout is a whole number of milliseconds,
    /// rounded up. So a fallback read comes when it would for a blocking
    /// caller, and deadlines in the same millisecond re-arm nothing.
    ///
    /// A timer armed for an earlier time that is still far off is kept: it
    /// fires early, and the turn it brings arms it again. A heartbeat's
    /// deadline moves later with each write, so this saves a system call
    /// per turn; a near one (coalescing's fallback read) is armed exactly,
    /// as firing early would cost a wake-up.
    pub(crate) fn arm(&mut self, deadline: Option<std::time::Instant>, now: std::time::Instant) {
        use std::os::fd::AsRawFd;
        /// How far off an armed time must be to be kept for a later deadline.
        const FAR: std::time::Duration = std::time::Duration::from_millis(100);
        let deadline = deadline.map(|d| self.round_up(d));
        let keep = match (self.armed, deadline) {
            (Some(armed), Some(deadline)) => {
                (armed == deadline && armed > now) || (armed > now + FAR && armed <= deadline)
            }
            (armed, None) => armed.is_none(),
            (None, Some(_)) => false,
        };
        if keep {
            return;
        }
        let after = deadline.map_or(std::time::Duration::ZERO, |d| {
            // Zero disarms: a deadline already due fires in a nanosecond.
            d.saturating_duration_since(now)
                .max(std::time::Duration::from_nanos(1))
        });
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: the descriptor is this timer's; `spec` outlives the call.
        let set =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        self.armed = if set == 0 { deadline } else { None };
    }

    /// The first whole millisecond of the timer's grid at or after
    /// `deadline` (`deadline` itself if that is past what `Instant` holds).
    fn round_up(&self, deadline: std::time::Instant) -> std::time::Instant {
        const MILLISECOND: u128 = 1_000_000;
        let nanos = deadline.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos.div_ceil(MILLISECOND))
            .ok()
            .and_then(|millis| {
                self.epoch
                    .checked_add(std::time::Duration::from_millis(millis))
            })
            .unwrap_or(deadline)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::WakeupTimer;
    use std::time::{Duration, Instant};

    const TIMER: mio::Token = mio::Token(7);

    #[test]
    fn deadlines_are_rounded_up_to_the_timers_millisecond_grid() {
        let poll = mio::Poll::new().unwrap();
        let timer = WakeupTimer::new(poll.registry(), TIMER).unwrap();
        let start = Instant::now();
        for step in 0..2_000u64 {
            let deadline = start + Duration::from_micros(step * 37);
            let rounded = timer.round_up(deadline);
            assert!(rounded >= deadline, "rounded {step} down");
            assert!(rounded < deadline + Duration::from_millis(1));
            let on_grid = rounded.duration_since(timer.epoch).as_nanos() % 1_000_000;
            assert_eq!(on_grid, 0, "step {step} is off the grid");
        }
        // Deadlines within one millisecond of the grid share its end.
        let slot = timer.round_up(start + Duration::from_millis(5));
        let earlier = slot - Duration::from_micros(900);
        assert_eq!(timer.round_up(earlier), slot);
        // A deadline too far off to round stays as it is, without a panic.
        let far = start + Duration::from_secs(u64::MAX / 4);
        assert!(timer.round_up(far) >= far);
    }

    #[test]
    fn the_timer_fires_at_the_rounded_deadline_not_before_the_deadline() {
        let mut poll = mio::Poll::new().unwrap();
        let mut timer = WakeupTimer::new(poll.registry(), TIMER).unwrap();
        let now = Instant::now();
        let deadline = now + Duration::from_micros(2_300);
        timer.arm(Some(deadline), now);
        assert_eq!(timer.armed, Some(timer.round_up(deadline)));
        // Another deadline in the same millisecond keeps what is armed.
        let armed = timer.armed;
        timer.arm(
            Some(timer.round_up(deadline) - Duration::from_micros(1)),
            now,
        );
        assert_eq!(timer.armed, armed);
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(1)))
            .unwrap();
        let fired = Instant::now();
        assert!(
            events.iter().any(|e| e.token() == TIMER),
            "the timer never fired"
        );
        assert!(fired >= deadline, "fired {:?} early", deadline - fired);
        // Disarming forgets the armed time.
        timer.arm(None, Instant::now());
        assert_eq!(timer.armed, None);
    }
}
