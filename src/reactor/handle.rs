//! What the facades hold: the way into a connection's reactor (a command
//! queue and a `mio::Waker`) and the places the reactor leaves results
//! (completions, consumer queues, channel state).
//!
//! Every waiting primitive here is a future woken through its `Waker` by the
//! reactor thread. The async facade awaits them; the blocking facade parks
//! its thread on them (`blocking::wait`), so the waiting logic exists once.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use crate::error::Error;
use crate::session::tags::UnsettledTags;
use crate::session::{ChannelRef, Command, Delivery, Reply, ReturnedMessage};

/// Past this many bytes waiting to be written (queued commands included),
/// publishers wait. Enough to keep the socket busy and batch writes; more
/// only adds latency (at 16-byte messages, 2 MiB is about 30k messages).
pub(crate) const HIGH_WATER: usize = 2 << 20;
/// Publishers waiting for room are released below this.
pub(crate) const LOW_WATER: usize = 1 << 20;

/// [`Shared::polling`]: nobody waits in the poll.
const NOT_POLLING: u8 = 0;
/// [`Shared::polling`]: a thread waits in the poll.
const POLLING: u8 = 1;
/// [`Shared::polling`]: a thread waits in a poll that ends within a
/// millisecond (a fast stream's fallback read).
const POLLING_BRIEFLY: u8 = 2;
/// [`Shared::polling`]: a thread waits in a poll that ends within
/// [`GATHER_WAIT`](super::GATHER_WAIT), gathering a fast publisher's
/// publishes: a publish wakes it only once [`GATHER_BYTES`] wait.
const POLLING_GATHERING: u8 = 3;

/// While the driver gathers publishes, the publish that brings the queued
/// bytes to this many wakes it: a fast stream of large bodies is written
/// as it comes, a stream of small ones once a millisecond.
const GATHER_BYTES: usize = 32 << 10;

/// What a queued publish costs beyond its body: its method and header
/// frames and its place in the queue, so tiny bodies are counted fairly.
const PUBLISH_OVERHEAD: usize = 64;

/// Locks a mutex, ignoring poisoning: the data behind every lock here stays
/// consistent whatever panics (each critical section is a plain update).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
}

impl Completion {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Completion {
            slot: Mutex::new(Slot::Pending(None)),
        })
    }

    /// Stores the result and wakes the waiter.
    pub(crate) fn complete(&self, result: Result<Reply, Error>) {
        let mut slot = lock(&self.slot);
        if let Slot::Pending(waker) = std::mem::replace(&mut *slot, Slot::Done(result)) {
            drop(slot);
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Stores the result and leaves its waiter's waker in `wake_later`
    /// (unless the last one there wakes the same task): the reactor wakes
    /// them once the whole turn's results are in, so a task waiting on one
    /// of many results finds the others done too, rather than being woken
    /// for each as it comes.
    pub(crate) fn complete_later(&self, result: Result<Reply, Error>, wake_later: &mut Vec<Waker>) {
        let mut slot = lock(&self.slot);
        if let Slot::Pending(waker) = std::mem::replace(&mut *slot, Slot::Done(result)) {
            drop(slot);
            if let Some(waker) = waker {
                if !wake_later.last().is_some_and(|w| w.will_wake(&waker)) {
                    wake_later.push(waker);
                }
            }
        }
    }

    /// Polls for the result from a future.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<Reply, Error>> {
        let mut slot = lock(&self.slot);
        match &mut *slot {
            Slot::Pending(waker) => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            _ => Poll::Ready(take(&mut slot)),
        }
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
    /// In a consumer set: whether this member is in its turn order (or
    /// about to be put there), so it is listed at most once.
    listed: bool,
}

/// A consumer's buffer of deliveries, filled by the reactor in batches.
/// Its size is bounded by the channel's prefetch (for acknowledged consumers).
pub(crate) struct ConsumerQueue {
    state: Mutex<ConsumerState>,
    /// Deliveries the receiving side took from `state` in one swap and
    /// hands out one by one: the lock the reactor also takes is taken once
    /// per batch, not once per delivery.
    taken: Mutex<VecDeque<Delivery>>,
    /// Set when the application dropped its consumer: later deliveries are
    /// requeued by the reactor instead of buffered.
    abandoned: AtomicBool,
    /// Whether the consumer acknowledges (so abandoned deliveries can be
    /// requeued): auto-ack deliveries are the broker's no longer.
    pub(crate) acknowledged: bool,
    /// The channel the consumer is on.
    pub(crate) channel: ChannelRef,
    /// That channel's state, where delivered tags are recorded.
    pub(crate) channel_state: Arc<ChannelShared>,
    /// The consumer set this consumer joined, and its place in it.
    member_of: OnceLock<(Arc<ReadyMembers>, usize)>,
}

/// What a consumer's receiver found.
pub(crate) enum Received {
    Delivery(Delivery),
    /// Ended: by the application (`Ok`) or with an error.
    Ended(Result<(), Error>),
}

impl ConsumerQueue {
    pub(crate) fn new(
        channel: ChannelRef,
        channel_state: Arc<ChannelShared>,
        acknowledged: bool,
    ) -> Arc<Self> {
        Arc::new(ConsumerQueue {
            state: Mutex::new(ConsumerState {
                deliveries: VecDeque::new(),
                ended: None,
                waker: None,
                listed: false,
            }),
            taken: Mutex::new(VecDeque::new()),
            abandoned: AtomicBool::new(false),
            acknowledged,
            channel,
            channel_state,
            member_of: OnceLock::new(),
        })
    }

    /// Makes this consumer member `index` of the set whose turn order is
    /// `ready`, listed there at once (its first turn finds out whether it
    /// holds anything). A consumer joins one set at most.
    pub(crate) fn join(&self, ready: &Arc<ReadyMembers>, index: usize) {
        if self.member_of.set((ready.clone(), index)).is_ok() {
            lock(&self.state).listed = true;
            ready.push(index);
        }
    }

    /// After something was buffered or the end recorded (under the state
    /// lock): whether this consumer must now be listed in its set's turn
    /// order. `announce` lists it, once the lock is let go.
    fn needs_listing(&self, state: &mut ConsumerState) -> bool {
        let newly = self.member_of.get().is_some() && !state.listed;
        state.listed |= newly;
        newly
    }

    fn announce(&self) {
        if let Some((ready, index)) = self.member_of.get() {
            ready.push(*index);
        }
    }

    /// Whether the application dropped the consumer.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// Appends `first` and the deliveries `next` gives, under one lock and
    /// one wake-up. `next` is told of each delivery just appended (before
    /// the application can see it) and gives the one to append after it.
    pub(crate) fn push_run(
        &self,
        first: Delivery,
        mut next: impl FnMut(&Delivery) -> Option<Delivery>,
    ) {
        let mut state = lock(&self.state);
        let mut delivery = first;
        loop {
            let after = next(&delivery);
            state.deliveries.push_back(delivery);
            match after {
                Some(d) => delivery = d,
                None => break,
            }
        }
        self.wake(state);
    }

    /// Marks the end of the stream (after what is buffered).
    pub(crate) fn end(&self, reason: Result<(), Error>) {
        let mut state = lock(&self.state);
        if state.ended.is_none() {
            state.ended = Some(reason);
        }
        self.wake(state);
    }

    /// Wakes whoever waits for this consumer: its own receiver, or the
    /// set it is a member of.
    fn wake(&self, mut state: MutexGuard<'_, ConsumerState>) {
        let waker = state.waker.take();
        let newly_listed = self.needs_listing(&mut state);
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        if newly_listed {
            self.announce();
        }
    }

    /// Polls for the next delivery or the end.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Received> {
        match self.next_or(|state| state.waker = Some(cx.waker().clone())) {
            Some(received) => Poll::Ready(received),
            None => Poll::Pending,
        }
    }

    /// The next delivery or the end, for the consumer set this consumer
    /// is a member of; `None` (and unlisted) when there is neither yet.
    pub(crate) fn try_recv_member(&self) -> Option<Received> {
        self.next_or(|state| state.listed = false)
    }

    /// The next delivery or the end, or `None` after calling `when_empty`
    /// under the state lock (where the reactor adds deliveries).
    fn next_or(&self, when_empty: impl FnOnce(&mut ConsumerState)) -> Option<Received> {
        let mut taken = lock(&self.taken);
        if let Some(d) = taken.pop_front() {
            return Some(Received::Delivery(d));
        }
        let mut state = lock(&self.state);
        // Swap buffers: the reactor keeps filling the (empty, already
        // allocated) one this side emptied.
        std::mem::swap(&mut *taken, &mut state.deliveries);
        if let Some(d) = taken.pop_front() {
            return Some(Received::Delivery(d));
        }
        match state.ended.clone() {
            Some(reason) => Some(Received::Ended(reason)),
            None => {
                when_empty(&mut state);
                None
            }
        }
    }

    /// Marks the consumer dropped and takes everything buffered (to requeue it).
    pub(crate) fn abandon(&self) -> Vec<Delivery> {
        let mut taken = lock(&self.taken);
        let mut state = lock(&self.state);
        self.abandoned.store(true, Ordering::Release);
        taken.drain(..).chain(state.deliveries.drain(..)).collect()
    }
}

// ---------------------------------------------------------------------------

/// The turn order of a consumer set: the members that may hold a delivery
/// or their end, each listed once, and the receiver waiting for one.
#[derive(Default)]
pub(crate) struct ReadyMembers {
    state: Mutex<ReadyState>,
}

#[derive(Default)]
struct ReadyState {
    turns: VecDeque<usize>,
    waker: Option<Waker>,
}

impl ReadyMembers {
    /// Lists member `index` last and wakes the receiver.
    pub(crate) fn push(&self, index: usize) {
        let mut state = lock(&self.state);
        state.turns.push_back(index);
        let waker = state.waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The member whose turn it is, taken off the list; with none listed,
    /// `cx` is woken by the next `push`.
    pub(crate) fn pop(&self, cx: &mut Context<'_>) -> Option<usize> {
        let mut state = lock(&self.state);
        let next = state.turns.pop_front();
        if next.is_none() {
            match &state.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
        }
        next
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
    /// Deliveries handed to the application and not yet settled.
    pub(crate) unsettled: Mutex<UnsettledTags>,
    /// Whether in-order single acks go out as `multiple` acks that the
    /// reactor coalesces (see `Channel::set_ack_coalescing`).
    pub(crate) coalesce_acks: AtomicBool,
}

impl ChannelShared {
    /// Settles a delivery tag (ack, nack, reject) or says why it cannot be.
    pub(crate) fn settle(
        &self,
        channel: u16,
        delivery_tag: u64,
        multiple: bool,
    ) -> Result<bool, Error> {
        lock(&self.unsettled)
            .settle(delivery_tag, multiple)
            .map_err(|_| Error::UnknownDeliveryTag {
                channel,
                delivery_tag,
            })
    }

    /// The error a closed channel reports, if it is closed.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match &*lock(&self.closed) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

/// Connection-wide notices: connection.blocked / unblocked, and automatic
/// recovery's progress.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The broker stopped reading from publishing connections (a resource
    /// alarm); publishes wait until it unblocks.
    Blocked {
        /// The broker's reason, e.g. "low on memory".
        reason: String,
    },
    /// The broker reads publishes again.
    Unblocked,
    /// The connection was lost and automatic recovery started: calls in
    /// flight failed with [`Error::ConnectionLost`], new ones wait (publishes
    /// up to the write buffer's high-water mark) until it is recovered.
    RecoveryStarted {
        /// Why the connection was lost.
        cause: Error,
    },
    /// The connection is back: channels, their modes, the topology and the
    /// consumers were restored (see the report for what was not).
    Recovered(crate::session::RecoveryReport),
    /// Recovery gave up (its attempts ran out): the connection is closed.
    RecoveryFailed {
        /// The last attempt's error.
        error: Error,
    },
}

/// Connection events not yet taken, and the task waiting for one.
#[derive(Default)]
struct EventQueue {
    queue: VecDeque<ConnectionEvent>,
    waker: Option<Waker>,
}

/// The state shared by a connection's handles and its reactor thread.
pub(crate) struct Shared {
    /// Commands for the reactor, taken all at once each turn.
    commands: Mutex<Vec<Command<Arc<Completion>, Arc<ConsumerQueue>>>>,
    /// Whether a thread waits in (or is about to enter) the poll, which
    /// only the waker cuts short ([`NOT_POLLING`], [`POLLING`] or
    /// [`POLLING_BRIEFLY`]). Set under `commands`' lock as the driver looks
    /// for queued commands before it polls, so a command queued after that
    /// look sees it.
    polling: AtomicU8,
    /// Acks wait in `commands` without having woken the poll (it was
    /// brief): the next command wakes it as if it came first. Changed under
    /// `commands`' lock.
    acks_unannounced: AtomicBool,
    waker: mio::Waker,
    /// Bytes of publish bodies queued but not yet taken by the reactor.
    queued_bytes: AtomicUsize,
    /// Bytes the session has yet to write.
    pub(crate) output_bytes: AtomicUsize,
    pub(crate) blocked: AtomicBool,
    /// Publishers waiting for room past the high-water mark.
    room: Mutex<Vec<Waker>>,
    /// Set once the connection is closed, with why.
    pub(crate) closed: Mutex<Option<Error>>,
    pub(crate) channels: Mutex<HashMap<u16, Arc<ChannelShared>>>,
    events: Mutex<EventQueue>,
    /// What the handshake negotiated, for the opener.
    pub(crate) info: Mutex<Option<super::HandshakeInfo>>,
    /// The reactor, and who drives it now (see `reactor::lead`).
    pub(crate) lead: super::lead::Leadership,
    /// The connection's poll, for an async runtime to watch (see
    /// `reactor::runtime`); `None` if its descriptor could not be shared.
    #[cfg(all(unix, feature = "tokio"))]
    pub(crate) runtime: Option<super::runtime::RuntimeWatch>,
}

impl Shared {
    pub(crate) fn new(poll: &mio::Poll) -> std::io::Result<Self> {
        let waker = mio::Waker::new(poll.registry(), super::WAKER)?;
        #[cfg(not(all(unix, feature = "tokio")))]
        let _ = poll;
        Ok(Shared {
            commands: Mutex::new(Vec::new()),
            polling: AtomicU8::new(NOT_POLLING),
            acks_unannounced: AtomicBool::new(false),
            waker,
            queued_bytes: AtomicUsize::new(0),
            output_bytes: AtomicUsize::new(0),
            blocked: AtomicBool::new(false),
            room: Mutex::new(Vec::new()),
            closed: Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
            events: Mutex::new(EventQueue::default()),
            info: Mutex::new(None),
            lead: Default::default(),
            #[cfg(all(unix, feature = "tokio"))]
            runtime: super::runtime::RuntimeWatch::new(poll).ok(),
        })
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
        let publish_cost = match &command {
            Command::Publish { body, .. } => Some(body.len() + PUBLISH_OVERHEAD),
            _ => None,
        };
        let queued_before =
            publish_cost.map(|cost| self.queued_bytes.fetch_add(cost, Ordering::Relaxed));
        // A close always wakes the reactor: while it recovers it leaves
        // other commands queued, and only looks for a close when woken.
        let close = matches!(command, Command::Close { .. });
        // Acks and the like, unlike publishes, may be holding the broker
        // back (a consumer's prefetch): with nobody driving, this thread
        // sends them itself (see `Shared::send_acks_here`).
        let urgent = matches!(command, Command::Send { .. });
        let polling = self.polling.load(Ordering::Relaxed);
        let brief = polling == POLLING_BRIEFLY || polling == POLLING_GATHERING;
        // A brief poll (a fast stream's, whose fallback read comes within a
        // millisecond) is not cut short for an ack: the turn after it sends
        // the ack with the next batch's, and the wake-up is saved. Nor is a
        // poll gathering a fast publisher's publishes, until they fill
        // GATHER_BYTES.
        let gathered = polling == POLLING_GATHERING
            && matches!((queued_before, publish_cost), (Some(before), Some(cost)) if before + cost < GATHER_BYTES);
        let unannounced = (urgent && brief) || gathered;
        let first = commands.is_empty()
            || (!unannounced && self.acks_unannounced.swap(false, Ordering::Relaxed));
        if unannounced && first {
            self.acks_unannounced.store(true, Ordering::Relaxed);
        }
        commands.push(command);
        drop(commands);
        if !(first || close) || unannounced || (urgent && self.send_acks_here()) {
            return Ok(());
        }
        // The waker only cuts a poll short. A driver busy with a turn looks
        // for commands before its next poll; with nobody driving, the next
        // leader does, or the reactor thread at its next look (see `lead`).
        if polling != NOT_POLLING || close {
            self.waker.wake().map_err(Error::from)?;
        }
        Ok(())
    }

    /// Polls `poll` for an async caller. With the feature `tokio`, it
    /// looks first with a waker that does nothing; if that finds nothing
    /// and the caller can drive the connection (see
    /// [`Shared::drive_async`]), it drives; then it looks again with its
    /// own waker. What a drive completes must not wake the task, which is
    /// about to look anyway (a wasted poll, and under tokio's `block_on` a
    /// wasted `epoll_wait`). A result already in costs one look.
    pub(crate) fn poll_driving<T>(
        &self,
        cx: &mut Context<'_>,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        #[cfg(all(unix, feature = "tokio"))]
        {
            if let Poll::Ready(value) = poll(&mut Context::from_waker(std::task::Waker::noop())) {
                return Poll::Ready(value);
            }
            if let Some(watch) = self.runtime_watch() {
                self.drive_async(watch, cx);
            }
        }
        poll(cx)
    }

    /// Adds a connection event and wakes whoever waits for one.
    pub(crate) fn push_event(&self, event: ConnectionEvent) {
        let mut events = lock(&self.events);
        events.queue.push_back(event);
        let waker = events.waker.take();
        drop(events);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The next connection event, if one came.
    pub(crate) fn try_next_event(&self) -> Option<ConnectionEvent> {
        lock(&self.events).queue.pop_front()
    }

    /// Ready with the next connection event, or `None` once the connection
    /// is closed and every event was taken.
    pub(crate) fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Option<ConnectionEvent>> {
        let mut events = lock(&self.events);
        if let Some(event) = events.queue.pop_front() {
            return Poll::Ready(Some(event));
        }
        if self.check().is_err() {
            return Poll::Ready(None);
        }
        events.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Wakes a task waiting for an event (when the connection closes).
    pub(crate) fn wake_event_waiter(&self) {
        if let Some(w) = lock(&self.events).waker.take() {
            w.wake();
        }
    }

    /// Takes a queued connection.close request, leaving the other commands
    /// queued (reactor side, while recovering).
    pub(crate) fn take_close_request(&self) -> Option<Arc<Completion>> {
        let mut commands = lock(&self.commands);
        let index = commands
            .iter()
            .position(|c| matches!(c, Command::Close { .. }))?;
        match commands.remove(index) {
            Command::Close { reply, .. } => Some(reply),
            _ => unreachable!("found a close above"),
        }
    }

    /// Makes the reactor's next wait return at once (reactor side).
    pub(crate) fn wake_reactor(&self) {
        let _ = self.waker.wake();
    }

    /// Whether commands wait for the reactor.
    pub(crate) fn has_commands(&self) -> bool {
        !lock(&self.commands).is_empty()
    }

    /// The driver is about to poll: from here, a queued command wakes it.
    /// Returns whether commands wait already (then it should not wait).
    /// `briefly`: the poll ends within [`FALLBACK`](super::coalesce::FALLBACK)
    /// for a fast stream's fallback read, so acks need not cut it short.
    /// `gathering`: it ends within [`GATHER_WAIT`](super::GATHER_WAIT), and
    /// publishes need not cut it short either (until [`GATHER_BYTES`]);
    /// publishes queued already, alone, do not make it skip the wait.
    pub(crate) fn prepare_poll(&self, briefly: bool, gathering: bool) -> bool {
        let commands = lock(&self.commands);
        let state = match (gathering, briefly) {
            (true, _) => POLLING_GATHERING,
            (false, true) => POLLING_BRIEFLY,
            (false, false) => POLLING,
        };
        self.polling.store(state, Ordering::Relaxed);
        // Publishes alone, short of GATHER_BYTES, can wait for the end of
        // a gathering poll.
        let gathered = gathering
            && self.queued_bytes.load(Ordering::Relaxed) < GATHER_BYTES
            && commands
                .iter()
                .all(|c| matches!(c, Command::Publish { .. }));
        !commands.is_empty() && !gathered
    }

    /// The driver's poll returned: it looks for commands before the next.
    pub(crate) fn done_polling(&self) {
        self.polling.store(NOT_POLLING, Ordering::Relaxed);
    }

    /// Takes every queued command (reactor side); how many are publishes.
    pub(crate) fn take_commands(
        &self,
        into: &mut Vec<Command<Arc<Completion>, Arc<ConsumerQueue>>>,
    ) -> usize {
        let mut commands = lock(&self.commands);
        std::mem::swap(&mut *commands, into);
        self.acks_unannounced.store(false, Ordering::Relaxed);
        drop(commands);
        let (mut publishes, mut queued) = (0, 0);
        for command in into.iter() {
            if let Command::Publish { body, .. } = command {
                publishes += 1;
                queued += body.len() + PUBLISH_OVERHEAD;
            }
        }
        self.queued_bytes.fetch_sub(queued, Ordering::Relaxed);
        publishes
    }

    fn has_room(&self) -> bool {
        !self.blocked.load(Ordering::Acquire)
            && self.queued_bytes.load(Ordering::Relaxed) + self.output_bytes.load(Ordering::Relaxed)
                < HIGH_WATER
    }

    /// Ready when a publisher may go on: the write buffer is below its
    /// high-water mark and the broker has not blocked the connection.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if let Some(e) = &*lock(&self.closed) {
            return Poll::Ready(Err(e.clone()));
        }
        if self.has_room() {
            return Poll::Ready(Ok(()));
        }
        let mut wakers = lock(&self.room);
        if self.has_room() {
            return Poll::Ready(Ok(()));
        }
        wakers.push(cx.waker().clone());
        Poll::Pending
    }

    /// Wakes waiting publishers if there is room again (reactor side).
    pub(crate) fn release_room(&self, output: usize) {
        self.output_bytes.store(output, Ordering::Relaxed);
        if output <= LOW_WATER || self.has_room() {
            let wakers = std::mem::take(&mut *lock(&self.room));
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

// ---------------------------------------------------------------------------

/// How a [`Call`] turns the reactor's reply into its result.
enum Parser<T> {
    /// An RPC: the parser sees the method that was sent (for no-wait
    /// echoes). Boxed, so a `Call` (a publisher confirm's, say) moves at a
    /// few words, not at the largest method's size.
    Rpc(
        Box<crate::protocol::Method>,
        fn(Reply, &crate::protocol::Method) -> Result<T, Error>,
    ),
    Plain(fn(Reply) -> Result<T, Error>),
}

/// An operation already handed to the connection, whose result can be
/// awaited (it is a `Future`), or waited for by the blocking facade.
///
/// The command is sent when the call is made, not when it is awaited, so
/// calls pipeline. Dropping a `Call` does not cancel the operation; its
/// result is discarded and the channel stays usable.
#[must_use = "the operation is sent, but its result (and any error) is lost unless awaited or waited for"]
pub struct Call<T> {
    state: Option<CallState<T>>,
    /// The connection this call's task drives while it waits (feature
    /// `tokio`; see [`Shared::drive_async`]).
    #[cfg(all(unix, feature = "tokio"))]
    driver: Option<Arc<Shared>>,
}

/// A call in progress (its completion and how to read it), or its early error.
type CallState<T> = Result<(Arc<Completion>, Parser<T>), Error>;

impl<T> Unpin for Call<T> {}

impl<T> Call<T> {
    pub(crate) fn failed(error: Error) -> Self {
        Call {
            state: Some(Err(error)),
            #[cfg(all(unix, feature = "tokio"))]
            driver: None,
        }
    }

    pub(crate) fn rpc(
        completion: Arc<Completion>,
        sent: crate::protocol::Method,
        parse: fn(Reply, &crate::protocol::Method) -> Result<T, Error>,
    ) -> Self {
        Call {
            state: Some(Ok((completion, Parser::Rpc(Box::new(sent), parse)))),
            #[cfg(all(unix, feature = "tokio"))]
            driver: None,
        }
    }

    pub(crate) fn plain(completion: Arc<Completion>, parse: fn(Reply) -> Result<T, Error>) -> Self {
        Call {
            state: Some(Ok((completion, Parser::Plain(parse)))),
            #[cfg(all(unix, feature = "tokio"))]
            driver: None,
        }
    }

    /// An async caller awaiting this call drives `shared`'s connection
    /// while it waits, when a runtime can watch it (feature `tokio`).
    pub(crate) fn driven_by(self, shared: &Arc<Shared>) -> Self {
        #[cfg(all(unix, feature = "tokio"))]
        return Call {
            driver: Some(shared.clone()),
            ..self
        };
        #[cfg(not(all(unix, feature = "tokio")))]
        {
            let _ = shared;
            self
        }
    }

    fn finish(parser: Parser<T>, reply: Result<Reply, Error>) -> Result<T, Error> {
        let reply = reply?;
        match parser {
            Parser::Rpc(sent, parse) => parse(reply, &sent),
            Parser::Plain(parse) => parse(reply),
        }
    }
}

impl<T> Future for Call<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match self
            .state
            .as_ref()
            .expect("a Call is not polled after completion")
        {
            Err(_) => None,
            Ok((completion, _)) => {
                #[cfg(all(unix, feature = "tokio"))]
                let polled = match &self.driver {
                    Some(shared) => shared.poll_driving(cx, |cx| completion.poll(cx)),
                    None => completion.poll(cx),
                };
                #[cfg(not(all(unix, feature = "tokio")))]
                let polled = completion.poll(cx);
                match polled {
                    Poll::Ready(r) => Some(r),
                    Poll::Pending => return Poll::Pending,
                }
            }
        };
        match (self.state.take().expect("checked above"), result) {
            (Err(e), _) => Poll::Ready(Err(e)),
            (Ok((_, parser)), Some(reply)) => Poll::Ready(Self::finish(parser, reply)),
            (Ok(_), None) => unreachable!("a pending call has a result"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    type Cmd = Command<Arc<Completion>, Arc<ConsumerQueue>>;

    const CHANNEL: ChannelRef = ChannelRef { id: 1, serial: 1 };

    fn publish(body_len: usize) -> Cmd {
        Command::Publish {
            channel: CHANNEL,
            method: Default::default(),
            properties: Default::default(),
            body: bytes::Bytes::from(vec![0u8; body_len]),
            confirm: None,
        }
    }

    fn wait_for_confirms() -> Cmd {
        Command::WaitForConfirms {
            channel: CHANNEL,
            reply: Completion::new(),
        }
    }

    /// Whether the waker fired since the last look.
    fn woken(poll: &mut mio::Poll) -> bool {
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        events.iter().any(|e| e.token() == super::super::WAKER)
    }

    #[test]
    fn outside_a_gathering_poll_the_first_publish_wakes_it() {
        let mut poll = mio::Poll::new().unwrap();
        let shared = Shared::new(&poll).unwrap();
        assert!(!shared.prepare_poll(false, false));
        shared.submit(publish(16)).unwrap();
        assert!(woken(&mut poll));
    }

    #[test]
    fn a_gathering_poll_is_woken_by_publishes_only_once_they_fill_gather_bytes() {
        let mut poll = mio::Poll::new().unwrap();
        let shared = Shared::new(&poll).unwrap();
        assert!(!shared.prepare_poll(false, true));
        let body = 1000;
        let short_of_it = (GATHER_BYTES - 1) / (body + PUBLISH_OVERHEAD);
        for _ in 0..short_of_it {
            shared.submit(publish(body)).unwrap();
        }
        assert!(!woken(&mut poll), "woken before GATHER_BYTES");
        shared.submit(publish(body)).unwrap();
        assert!(woken(&mut poll), "not woken at GATHER_BYTES");
    }

    #[test]
    fn a_command_other_than_a_publish_wakes_a_gathering_poll_at_once() {
        let mut poll = mio::Poll::new().unwrap();
        let shared = Shared::new(&poll).unwrap();
        assert!(!shared.prepare_poll(false, true));
        shared.submit(publish(16)).unwrap();
        assert!(!woken(&mut poll));
        shared.submit(wait_for_confirms()).unwrap();
        assert!(woken(&mut poll));
    }

    #[test]
    fn only_publishes_short_of_gather_bytes_may_wait_for_a_gathering_poll() {
        let poll = mio::Poll::new().unwrap();
        let shared = Shared::new(&poll).unwrap();
        // Queued while nobody polled.
        shared.submit(publish(16)).unwrap();
        assert!(!shared.prepare_poll(false, true), "a gathering poll waits");
        shared.done_polling();
        assert!(shared.prepare_poll(false, false), "any other poll does not");
        shared.done_polling();
        shared.submit(wait_for_confirms()).unwrap();
        assert!(shared.prepare_poll(false, true), "not with another command");
        shared.done_polling();
        let mut taken = Vec::new();
        shared.take_commands(&mut taken);
        shared.submit(publish(GATHER_BYTES)).unwrap();
        assert!(shared.prepare_poll(false, true), "not past GATHER_BYTES");
    }
}
