//! Who drives a connection's I/O: leader/follower.
//!
//! The reactor (socket, poll, session) sits behind one lock, and whoever
//! holds it drives: waits in `poll`, reads, runs the session, writes and
//! hands results out. Usually that is the connection's reactor thread. But
//! a blocking caller about to park for its result (a consumer whose buffer
//! ran dry, a publisher waiting for a confirm) takes the lock instead and
//! drives the connection itself until its result is in. The bytes it waits
//! for then wake the thread that wants them: one thread switch per wait,
//! not the two of a hand-off between the reactor thread and the caller.
//!
//! The rules:
//! - A caller leads only while the connection is open and not recovering;
//!   the handshake, closing and recovery stay with the reactor thread.
//! - A caller that finds the lock taken parks as a follower: the leader's
//!   turns complete its result. It is recorded as waiting, and woken when
//!   the lead is let go; if the reactor thread leads, it is asked to hand
//!   over (through the poll's waker).
//! - A caller lets go as soon as its own result is in, without waking the
//!   reactor thread. The reactor thread checks every
//!   [`HANDBACK_INTERVAL`] (up to [`MAX_HANDBACK_INTERVAL`] while callers
//!   keep driving): when no caller took the lead or waited in poll for a
//!   whole interval, it takes the lead back. So after a caller leaves, the
//!   connection is undriven for at most about two intervals. A caller
//!   that leaves with commands queued, or with the connection closing,
//!   wakes the reactor thread at once.
//! - Commands queued while nobody drives wait for the next blocking call
//!   to lead, or for the reactor thread's next check, which takes the lead
//!   for them at once. Acks (and rejects) do not wait: the broker may be
//!   holding deliveries back for them, so the thread making one sends what
//!   is queued itself, at most once every [`ACK_FLUSH_SPACING`]. Every
//!   turn takes queued commands before it waits, so one left inside that
//!   spacing is not stranded behind a poll.
//! - While a caller sits in one long wait (an idle consumer), the reactor
//!   thread sleeps until that caller lets go, rather than every interval.
//! - An async caller under tokio (feature `tokio`) leads too, without
//!   waiting: it runs turns while input is ready, lets go, and leaves the
//!   runtime watching the poll (see `reactor::runtime`). To the reactor
//!   thread it is a caller that keeps driving; one that finds the reactor
//!   thread leading asks it to hand over and is woken when the lead is free.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::handle::{lock, Shared};
use super::Reactor;

/// How often the reactor thread looks whether the callers left the
/// connection undriven, at first; while callers keep driving, the interval
/// doubles up to [`MAX_HANDBACK_INTERVAL`].
const HANDBACK_INTERVAL: Duration = Duration::from_millis(1);
/// The longest interval between the reactor thread's looks.
const MAX_HANDBACK_INTERVAL: Duration = Duration::from_millis(4);

/// The least time between two flushes of acks by the threads making them.
const ACK_FLUSH_SPACING: Duration = Duration::from_micros(200);

/// Nobody drives the connection.
const NOBODY: u8 = 0;
/// The reactor thread drives and hands over when a caller asks.
const REACTOR_THREAD: u8 = 1;
/// A blocking caller drives until its result is in.
const CALLER: u8 = 2;
/// The reactor thread runs the connection's lifecycle (closing,
/// reconnecting) and keeps the lead.
const LIFECYCLE: u8 = 3;

/// The lock on the reactor, held by whoever drives the connection.
pub(super) type ReactorGuard<'a> = MutexGuard<'a, Option<Reactor>>;

/// The state of the lead, shared by a connection's handles and its reactor
/// thread (part of [`Shared`]).
pub(crate) struct Leadership {
    /// The reactor; `None` before it is built and after it shut down.
    reactor: Mutex<Option<Reactor>>,
    /// Who holds `reactor` (one of the constants above).
    leader: AtomicU8,
    /// Bumped each time a caller takes the lead or waits in poll: the
    /// reactor thread reads an unchanged value as "no caller drives".
    activity: AtomicU64,
    /// Callers that found the lead taken and want it when it is free.
    waiting: Mutex<Vec<Thread>>,
    /// Async callers that asked the reactor thread to hand over the lead
    /// (see `Shared::drive_async`), woken when it is free.
    #[cfg(all(unix, feature = "tokio"))]
    waiting_tasks: Mutex<Vec<std::task::Waker>>,
    /// A caller asked the reactor thread to hand over the lead.
    handover_wanted: AtomicBool,
    /// A caller left the connection needing the reactor thread at once.
    reactor_needed: AtomicBool,
    /// The reactor thread sleeps until the leading caller lets go.
    reactor_parked: AtomicBool,
    /// When a thread last sent acks itself (see `Shared::send_acks_here`).
    last_ack_flush: Mutex<Option<Instant>>,
    reactor_thread: OnceLock<Thread>,
}

/// What [`Shared::lead`] did.
pub(crate) enum Lead {
    /// This thread drove the connection, until its wait was over, its
    /// deadline passed or the connection needed its reactor thread.
    Led,
    /// Another thread drives: park until woken (by the result, or when the
    /// lead is free).
    Busy,
    /// The lead looked free a moment ago: try again at once.
    Retry,
}

impl Default for Leadership {
    fn default() -> Self {
        Leadership {
            reactor: Mutex::new(None),
            leader: AtomicU8::new(NOBODY),
            activity: AtomicU64::new(0),
            waiting: Mutex::new(Vec::new()),
            #[cfg(all(unix, feature = "tokio"))]
            waiting_tasks: Mutex::new(Vec::new()),
            handover_wanted: AtomicBool::new(false),
            reactor_needed: AtomicBool::new(false),
            reactor_parked: AtomicBool::new(false),
            last_ack_flush: Mutex::new(None),
            reactor_thread: OnceLock::new(),
        }
    }
}

impl Leadership {
    /// Installs the reactor, on the reactor thread, which holds the lead
    /// from here.
    pub(super) fn install(&self, reactor: Reactor) -> ReactorGuard<'_> {
        let _ = self.reactor_thread.set(std::thread::current());
        self.leader.store(LIFECYCLE, Ordering::SeqCst);
        let mut guard = lock(&self.reactor);
        *guard = Some(reactor);
        guard
    }

    fn try_take(&self) -> Option<ReactorGuard<'_>> {
        match self.reactor.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Lets go of the lead and wakes the callers that wanted it.
    fn release(&self, guard: ReactorGuard<'_>) {
        self.leader.store(NOBODY, Ordering::SeqCst);
        drop(guard);
        // Drained in place: the list keeps its room for the next waiters.
        for thread in lock(&self.waiting).drain(..) {
            thread.unpark();
        }
        #[cfg(all(unix, feature = "tokio"))]
        for task in lock(&self.waiting_tasks).drain(..) {
            task.wake();
        }
    }

    /// The reactor is not open yet, closing, recovering or shut down: the
    /// reactor thread's business. Lets go of it and, unless it is gone,
    /// tells the reactor thread.
    fn leave_to_reactor_thread(&self, guard: ReactorGuard<'_>) {
        let exists = guard.is_some();
        drop(guard);
        if exists {
            self.reactor_needed.store(true, Ordering::Release);
            self.wake_reactor_thread();
        }
    }

    fn wake_reactor_thread(&self) {
        if let Some(thread) = self.reactor_thread.get() {
            thread.unpark();
        }
    }
}

impl Shared {
    /// A blocking caller whose result is not in yet: drives the connection
    /// on this thread until `done` returns true, `deadline` passes or the
    /// connection needs its reactor thread (see the module docs).
    pub(crate) fn lead(&self, deadline: Option<Instant>, done: &mut dyn FnMut() -> bool) -> Lead {
        let lead = &self.lead;
        let Some(mut guard) = lead.try_take() else {
            return self.ask_for_lead();
        };
        if !guard.as_ref().is_some_and(|r| r.may_lead()) {
            lead.leave_to_reactor_thread(guard);
            return Lead::Busy;
        }
        let reactor = guard.as_mut().expect("checked above");
        lead.leader.store(CALLER, Ordering::SeqCst);
        lead.activity.fetch_add(1, Ordering::AcqRel);
        reactor.settle();
        loop {
            if done() || !reactor.may_lead() {
                break;
            }
            let max_wait = match deadline {
                None => None,
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    Some(deadline - now)
                }
            };
            lead.activity.fetch_add(1, Ordering::AcqRel);
            reactor.turn(max_wait);
        }
        let needs_reactor = !reactor.may_lead();
        lead.release(guard);
        // Commands queued after this thread's last turn would wait for
        // the next leader: let the reactor thread send them now.
        if needs_reactor || self.has_commands() {
            lead.reactor_needed.store(true, Ordering::Release);
            lead.wake_reactor_thread();
        } else if lead.reactor_parked.load(Ordering::SeqCst) {
            lead.wake_reactor_thread();
        }
        Lead::Led
    }

    /// What an async caller under a tokio runtime drives the connection
    /// with (feature `tokio`): `None` outside such a runtime, or when it
    /// has no I/O driver.
    #[cfg(all(unix, feature = "tokio"))]
    pub(crate) fn runtime_watch(&self) -> Option<super::runtime::Watched<'_>> {
        self.runtime.as_ref().and_then(|w| w.current())
    }

    /// An async caller whose result is not in yet, under a tokio runtime
    /// (feature `tokio`; `watch` from [`Shared::runtime_watch`]): drives
    /// the connection on this task without waiting, then leaves tokio
    /// watching the connection's poll with this task's waker (see
    /// `reactor::runtime`). The caller then looks for its result again
    /// (see [`Shared::poll_driving`]). With the reactor thread leading,
    /// asks it to hand over and is woken when the lead is free; with
    /// another caller leading, that caller's turns complete the result.
    #[cfg(all(unix, feature = "tokio"))]
    pub(crate) fn drive_async(
        &self,
        watch: super::runtime::Watched<'_>,
        cx: &mut std::task::Context<'_>,
    ) {
        /// Turns one drive may run while input keeps coming, before it
        /// yields to the task's other work.
        const MAX_TURNS: usize = 16;
        let lead = &self.lead;
        match lead.leader.load(Ordering::SeqCst) {
            NOBODY => {}
            REACTOR_THREAD => {
                let mut tasks = lock(&lead.waiting_tasks);
                if !tasks.iter().any(|t| t.will_wake(cx.waker())) {
                    tasks.push(cx.waker().clone());
                }
                drop(tasks);
                lead.handover_wanted.store(true, Ordering::Release);
                self.wake_reactor();
                if lead.leader.load(Ordering::SeqCst) == NOBODY {
                    // Let go before this task was recorded: nobody would
                    // wake it, so it looks again at once.
                    cx.waker().wake_by_ref();
                }
                return;
            }
            _ => return,
        }
        let Some(mut guard) = lead.try_take() else {
            return;
        };
        if !guard.as_ref().is_some_and(|r| r.may_lead()) {
            lead.leave_to_reactor_thread(guard);
            return;
        }
        let reactor = guard.as_mut().expect("checked above");
        lead.leader.store(CALLER, Ordering::SeqCst);
        lead.activity.fetch_add(1, Ordering::AcqRel);
        // Queued commands go out at once; the poll is only looked at when
        // tokio reports it readable (it watches every event the poll gets:
        // input, room to write, the wake-up timer).
        reactor.send_queued();
        let mut turns = 0;
        while let std::task::Poll::Ready(readiness) = watch.poll_ready(cx) {
            if turns == MAX_TURNS {
                cx.waker().wake_by_ref();
                break;
            }
            reactor.turn(Some(Duration::ZERO));
            readiness.consumed();
            turns += 1;
        }
        reactor.arm_wakeup();
        let needs_reactor = !reactor.may_lead();
        lead.release(guard);
        if needs_reactor {
            lead.reactor_needed.store(true, Ordering::Release);
            lead.wake_reactor_thread();
        } else if lead.reactor_parked.load(Ordering::SeqCst) {
            lead.wake_reactor_thread();
        }
    }

    /// A consumer's ack (or reject) queued while nobody drives the
    /// connection: a blocking consumer lets go of the lead while it works
    /// through its buffer, and the broker may be holding deliveries back
    /// for this ack. Takes the lead for a moment to send what is queued,
    /// without waiting for input; at most once per [`ACK_FLUSH_SPACING`],
    /// so acks made one per message leave in batches. `false` if it did
    /// not (the poll's waker then tells whoever drives).
    pub(crate) fn send_acks_here(&self) -> bool {
        let lead = &self.lead;
        if lead.leader.load(Ordering::SeqCst) != NOBODY {
            return false;
        }
        let now = Instant::now();
        {
            let mut last = lock(&lead.last_ack_flush);
            if last.is_some_and(|t| now.saturating_duration_since(t) < ACK_FLUSH_SPACING) {
                // Left queued: the next flush, lead or the reactor
                // thread's check sends it.
                return true;
            }
            *last = Some(now);
        }
        let Some(mut guard) = lead.try_take() else {
            return false;
        };
        let Some(reactor) = guard.as_mut().filter(|r| r.may_lead()) else {
            return false;
        };
        reactor.send_queued();
        lead.release(guard);
        true
    }

    /// The lead is taken: records this thread as wanting it, and asks the
    /// reactor thread to hand over if it is the one leading.
    fn ask_for_lead(&self) -> Lead {
        let lead = &self.lead;
        let me = std::thread::current();
        {
            let mut waiting = lock(&lead.waiting);
            if !waiting.iter().any(|t| t.id() == me.id()) {
                waiting.push(me);
            }
        }
        match lead.leader.load(Ordering::SeqCst) {
            // Let go since the lock was tried (and maybe before this
            // thread was recorded): nobody would wake it.
            NOBODY => Lead::Retry,
            REACTOR_THREAD => {
                lead.handover_wanted.store(true, Ordering::Release);
                self.wake_reactor();
                Lead::Busy
            }
            _ => Lead::Busy,
        }
    }

    /// The reactor thread's part: drives the connection whenever no caller
    /// does, until its session is finished (closed and flushed). Returns
    /// with the lead held, for the lifecycle (recovery or shutdown).
    pub(super) fn drive_until_finished<'a>(
        &'a self,
        mut held: Option<ReactorGuard<'a>>,
    ) -> ReactorGuard<'a> {
        let lead = &self.lead;
        let mut seen = lead.activity.load(Ordering::Acquire);
        loop {
            if let Some(mut guard) = held.take().or_else(|| lead.try_take()) {
                let reactor = guard.as_mut().expect("the reactor shuts down only here");
                lead.leader.store(REACTOR_THREAD, Ordering::SeqCst);
                reactor.settle();
                loop {
                    if reactor.finished() {
                        lead.leader.store(LIFECYCLE, Ordering::SeqCst);
                        return guard;
                    }
                    if reactor.may_lead() && lead.handover_wanted.swap(false, Ordering::AcqRel) {
                        break;
                    }
                    reactor.turn(None);
                }
                lead.release(guard);
                seen = lead.activity.load(Ordering::Acquire);
            }
            self.wait_while_callers_lead(&mut seen);
        }
    }

    /// The reactor thread, not leading: returns when it should try to take
    /// the lead back.
    fn wait_while_callers_lead(&self, seen: &mut u64) {
        let lead = &self.lead;
        let mut interval = HANDBACK_INTERVAL;
        loop {
            std::thread::park_timeout(interval);
            if lead.reactor_needed.swap(false, Ordering::AcqRel) {
                return;
            }
            if lead.leader.load(Ordering::SeqCst) == NOBODY && self.has_commands() {
                // Commands wait with nobody to send them (a consumer's acks
                // while it works through its buffer): the broker may be
                // holding deliveries back for them.
                return;
            }
            let activity = lead.activity.load(Ordering::Acquire);
            if activity != *seen {
                // A caller drove during the interval: leave it the lead.
                *seen = activity;
                interval = (interval * 2).min(MAX_HANDBACK_INTERVAL);
                continue;
            }
            if lead.leader.load(Ordering::SeqCst) != CALLER {
                return;
            }
            // One caller sat in one wait for the whole interval (an idle
            // consumer): sleep until it lets go.
            lead.reactor_parked.store(true, Ordering::SeqCst);
            if lead.leader.load(Ordering::SeqCst) == CALLER
                && lead.activity.load(Ordering::Acquire) == activity
                && !lead.reactor_needed.load(Ordering::Acquire)
            {
                std::thread::park();
            }
            lead.reactor_parked.store(false, Ordering::SeqCst);
            *seen = lead.activity.load(Ordering::Acquire);
            return;
        }
    }

    /// Takes the reactor out for good (the connection is over).
    pub(super) fn retire(&self, mut guard: ReactorGuard<'_>) -> Reactor {
        let reactor = guard.take().expect("retired once");
        self.lead.release(guard);
        reactor
    }
}
