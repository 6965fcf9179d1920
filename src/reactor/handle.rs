//! What the facades hold: the way into a connection's reactor (a command
//! queue and a `mio::Waker`) and the places the reactor leaves results
//! (completions, consumer queues, channel state).
//!
//! Every waiting primitive here works both ways: a blocking caller sleeps on
//! a `Condvar` (with a timeout), an async caller registers a `Waker`. The
//! facades add only the way they wait, so neither copies the other.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::session::{Command, Delivery, Reply, ReturnedMessage};

/// Past this many bytes waiting to be written (queued commands included),
/// publishers wait.
pub(crate) const HIGH_WATER: usize = 8 << 20;
/// Publishers waiting for room are released below this.
pub(crate) const LOW_WATER: usize = 4 << 20;

/// Locks a mutex, ignoring poisoning: the data behind every lock here stays
/// consistent whatever panics (each critical section is a plain update).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits on `cond` until `done` holds or `deadline` passes; `false` on timeout.
fn wait_until<'a, T>(
    cond: &Condvar,
    mut guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
    mut done: impl FnMut(&mut T) -> bool,
) -> (MutexGuard<'a, T>, bool) {
    loop {
        if done(&mut guard) {
            return (guard, true);
        }
        match deadline {
            None => guard = cond.wait(guard).unwrap_or_else(|e| e.into_inner()),
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    return (guard, false);
                }
                guard = cond
                    .wait_timeout(guard, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}

// ---------------------------------------------------------------------------

enum Slot {
    Pending(Option<Waker>),
    Done(Result<Reply, Error>),
    Taken,
}

/// A one-shot result: the reactor completes it, one caller takes it.
pub(crate) struct Completion {
    slot: Mutex<Slot>,
    cond: Condvar,
}

impl Completion {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Completion {
            slot: Mutex::new(Slot::Pending(None)),
            cond: Condvar::new(),
        })
    }

    /// Stores the result and wakes the waiter.
    pub(crate) fn complete(&self, result: Result<Reply, Error>) {
        let mut slot = lock(&self.slot);
        if let Slot::Pending(waker) = std::mem::replace(&mut *slot, Slot::Done(result)) {
            drop(slot);
            self.cond.notify_all();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Blocks until the result is in (or `timeout` passes).
    pub(crate) fn wait(
        &self,
        timeout: Option<Duration>,
        operation: &'static str,
    ) -> Result<Reply, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let slot = lock(&self.slot);
        let (mut slot, done) = wait_until(&self.cond, slot, deadline, |s| {
            !matches!(s, Slot::Pending(_))
        });
        if !done {
            return Err(Error::Timeout {
                operation,
                after: timeout.unwrap_or_default(),
            });
        }
        take(&mut slot)
    }
}

fn take(slot: &mut Slot) -> Result<Reply, Error> {
    match std::mem::replace(slot, Slot::Taken) {
        Slot::Done(result) => result,
        Slot::Taken => Err(Error::InvalidArgument("result already taken".into())),
        Slot::Pending(_) => unreachable!("take() after completion"),
    }
}

// ---------------------------------------------------------------------------

struct ConsumerState {
    deliveries: VecDeque<Delivery>,
    /// Why the consumer ended: `Ok` for a cancel by the application.
    ended: Option<Result<(), Error>>,
    waker: Option<Waker>,
}

/// A consumer's buffer of deliveries, filled by the reactor in batches.
/// Its size is bounded by the channel's prefetch (for acknowledged consumers).
pub(crate) struct ConsumerQueue {
    state: Mutex<ConsumerState>,
    cond: Condvar,
}

/// What a consumer's receiver found.
pub(crate) enum Received {
    Delivery(Delivery),
    /// Ended: by the application (`Ok`) or with an error.
    Ended(Result<(), Error>),
    TimedOut,
}

impl ConsumerQueue {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(ConsumerQueue {
            state: Mutex::new(ConsumerState {
                deliveries: VecDeque::new(),
                ended: None,
                waker: None,
            }),
            cond: Condvar::new(),
        })
    }

    /// Appends a batch under one lock and one wake-up.
    pub(crate) fn push_batch(&self, batch: impl Iterator<Item = Delivery>) {
        let mut state = lock(&self.state);
        state.deliveries.extend(batch);
        let waker = state.waker.take();
        drop(state);
        self.cond.notify_one();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Marks the end of the stream (after what is buffered).
    pub(crate) fn end(&self, reason: Result<(), Error>) {
        let mut state = lock(&self.state);
        if state.ended.is_none() {
            state.ended = Some(reason);
        }
        let waker = state.waker.take();
        drop(state);
        self.cond.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn next(state: &mut ConsumerState) -> Option<Received> {
        if let Some(d) = state.deliveries.pop_front() {
            return Some(Received::Delivery(d));
        }
        state.ended.clone().map(Received::Ended)
    }

    /// Blocks for the next delivery, the end, or the timeout.
    pub(crate) fn recv(&self, timeout: Option<Duration>) -> Received {
        let deadline = timeout.map(|t| Instant::now() + t);
        let state = lock(&self.state);
        let (mut state, done) = wait_until(&self.cond, state, deadline, |s| {
            !s.deliveries.is_empty() || s.ended.is_some()
        });
        if !done {
            return Received::TimedOut;
        }
        Self::next(&mut state).unwrap_or(Received::TimedOut)
    }

    /// Takes everything buffered (to requeue it when the consumer is dropped).
    pub(crate) fn drain(&self) -> Vec<Delivery> {
        lock(&self.state).deliveries.drain(..).collect()
    }
}

// ---------------------------------------------------------------------------

/// What the reactor tells a channel's handles.
#[derive(Default)]
pub(crate) struct ChannelShared {
    /// Set when the channel is closed (by either side): the error to report.
    pub(crate) closed: Mutex<Option<Error>>,
    /// Mandatory messages that came back.
    pub(crate) returns: Mutex<VecDeque<ReturnedMessage>>,
    /// channel.flow from the broker: `false` while publishing is paused.
    pub(crate) flow_paused: AtomicBool,
}

impl ChannelShared {
    /// The error a closed channel reports, if it is closed.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match &*lock(&self.closed) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

/// Connection-wide notices: connection.blocked / unblocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// The broker stopped reading from publishing connections (a resource
    /// alarm); publishes wait until it unblocks.
    Blocked {
        /// The broker's reason, e.g. "low on memory".
        reason: String,
    },
    /// The broker reads publishes again.
    Unblocked,
}

/// The state shared by a connection's handles and its reactor thread.
pub(crate) struct Shared {
    /// Commands for the reactor, taken all at once each turn.
    commands: Mutex<Vec<Command<Arc<Completion>, Arc<ConsumerQueue>>>>,
    waker: mio::Waker,
    /// Bytes of publish bodies queued but not yet taken by the reactor.
    queued_bytes: AtomicUsize,
    /// Bytes the session has yet to write.
    pub(crate) output_bytes: AtomicUsize,
    pub(crate) blocked: AtomicBool,
    /// Room for publishers: waited on past the high-water mark.
    room: Mutex<Vec<Waker>>,
    room_cond: Condvar,
    /// Set once the connection is closed, with why.
    pub(crate) closed: Mutex<Option<Error>>,
    pub(crate) channels: Mutex<HashMap<u16, Arc<ChannelShared>>>,
    pub(crate) events: Mutex<VecDeque<ConnectionEvent>>,
    /// What the handshake negotiated, for the opener.
    pub(crate) info: Mutex<Option<super::HandshakeInfo>>,
}

impl Shared {
    pub(crate) fn new(waker: mio::Waker) -> Self {
        Shared {
            commands: Mutex::new(Vec::new()),
            waker,
            queued_bytes: AtomicUsize::new(0),
            output_bytes: AtomicUsize::new(0),
            blocked: AtomicBool::new(false),
            room: Mutex::new(Vec::new()),
            room_cond: Condvar::new(),
            closed: Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
            events: Mutex::new(VecDeque::new()),
            info: Mutex::new(None),
        }
    }

    /// Queues a command and wakes the reactor if it may be asleep (only the
    /// first command of a batch costs a wake-up).
    pub(crate) fn submit(
        &self,
        command: Command<Arc<Completion>, Arc<ConsumerQueue>>,
    ) -> Result<(), Error> {
        let mut commands = lock(&self.commands);
        if let Some(e) = &*lock(&self.closed) {
            return Err(e.clone());
        }
        if let Command::Publish { body, .. } = &command {
            self.queued_bytes.fetch_add(body.len(), Ordering::Relaxed);
        }
        let was_empty = commands.is_empty();
        commands.push(command);
        drop(commands);
        if was_empty {
            self.waker.wake().map_err(Error::from)?;
        }
        Ok(())
    }

    /// Takes every queued command (reactor side).
    pub(crate) fn take_commands(
        &self,
        into: &mut Vec<Command<Arc<Completion>, Arc<ConsumerQueue>>>,
    ) {
        std::mem::swap(&mut *lock(&self.commands), into);
        let queued: usize = into
            .iter()
            .map(|c| match c {
                Command::Publish { body, .. } => body.len(),
                _ => 0,
            })
            .sum();
        self.queued_bytes.fetch_sub(queued, Ordering::Relaxed);
    }

    /// Submits a command and waits for its completion.
    pub(crate) fn call(
        &self,
        make: impl FnOnce(Arc<Completion>) -> Command<Arc<Completion>, Arc<ConsumerQueue>>,
        timeout: Option<Duration>,
        operation: &'static str,
    ) -> Result<Reply, Error> {
        let completion = Completion::new();
        self.submit(make(completion.clone()))?;
        completion.wait(timeout, operation)
    }

    fn has_room(&self) -> bool {
        !self.blocked.load(Ordering::Acquire)
            && self.queued_bytes.load(Ordering::Relaxed) + self.output_bytes.load(Ordering::Relaxed)
                < HIGH_WATER
    }

    /// Blocks a publisher while the write buffer is past its high-water mark
    /// or the broker has blocked the connection.
    pub(crate) fn wait_for_room(&self, timeout: Option<Duration>) -> Result<(), Error> {
        if self.has_room() {
            return Ok(());
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let guard = lock(&self.room);
        let (_guard, done) = wait_until(&self.room_cond, guard, deadline, |_| {
            self.has_room() || lock(&self.closed).is_some()
        });
        if let Some(e) = &*lock(&self.closed) {
            return Err(e.clone());
        }
        if !done {
            return Err(Error::Timeout {
                operation: "publish (waiting for the broker to unblock or the socket to drain)",
                after: timeout.unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Wakes waiting publishers if there is room again (reactor side).
    pub(crate) fn release_room(&self, output: usize) {
        self.output_bytes.store(output, Ordering::Relaxed);
        if output <= LOW_WATER || self.has_room() {
            let wakers = std::mem::take(&mut *lock(&self.room));
            self.room_cond.notify_all();
            for w in wakers {
                w.wake();
            }
        }
    }

    /// The channel's shared state (registered by the reactor when it opened).
    pub(crate) fn channel(&self, id: u16) -> Arc<ChannelShared> {
        lock(&self.channels).entry(id).or_default().clone()
    }

    /// The error if the connection is closed.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match &*lock(&self.closed) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}
