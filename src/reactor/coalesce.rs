//! Receive coalescing: while the broker streams to us, wake on several KiB
//! at a time instead of on every packet.
//!
//! A consumer that keeps up with its broker drains the socket each time it
//! wakes, so it wakes once per TCP segment or two and pays a sleep, a wake
//! and two system calls for a handful of messages. When bytes arrive fast,
//! the reactor asks the kernel (`SO_RCVLOWAT`) to report the socket readable
//! only once a *mark* of bytes waits: a millisecond of the arrival rate
//! measured while bytes flow (rounded down to [`MARK_BITS`] significant
//! bits, so between 0.8 and 1 ms of it), between [`MIN_MARK`] and
//! [`MAX_MARK`]. Each wake-up's fixed cost (a sleep, a wake, two system
//! calls, and for the async facade a second thread's wake-up) is then
//! shared by a batch worth most of a millisecond's work. A mark stays while
//! the rate moves little (it fills within a millisecond, and in no less
//! than three quarters of one), so a steady stream sets it once.
//!
//! - **Nothing is stranded.** While a mark is set the reactor waits
//!   [`FALLBACK`] past its last read (rounded up to whole milliseconds, as
//!   the poll's timeout and the async callers' wake-up timer are), then
//!   reads whatever is there.
//! - **Pauses.** A fallback read that finds nothing means the stream paused:
//!   the mark goes, so the pause costs no wake-ups, and comes back with the
//!   first bytes after it (unless the pause lasted [`FORGET_AFTER`]: then the
//!   rate is measured afresh).
//! - **Stalls.** A fallback read that finds bytes is a *stall*: they waited
//!   under the mark. If they show a slower stream than the mark was set
//!   for, the mark comes down to fit it, and the kernel wakes us at the
//!   lower mark next time. Brokers pause mid-stream, so a stall alone
//!   changes nothing more; but [`STARVED_STALLS`] in a row that bring too
//!   little for any mark ([`MIN_MARK`] a millisecond), with no read in
//!   between that the kernel woke us for at a mark, mean the bytes always
//!   stop short of it (a consumer whose prefetch window is smaller than the
//!   smallest mark: the broker waits for acks of what we have not read).
//!   The mark then goes for a hold-off, which doubles each time this
//!   repeats within [`CLEAN_SPAN`].
//!
//! - **Deep confirm pipelines.** A publisher with many confirms outstanding
//!   (at least [`DEEP_PIPELINE`]) is sent a stream of small acks, far below
//!   [`MIN_MARK`] a millisecond, and used to wake for each one or two. The
//!   broker has the rest of the window to confirm, so acks keep coming: while
//!   that many are outstanding and acks come less than a [`FALLBACK`] apart,
//!   the mark is [`DEEP_PIPELINE_MARK`], more than they bring in a fallback
//!   wait, so they are read on the fallback's beat, once a millisecond,
//!   however the broker spreads them. A fallback read that finds nothing
//!   drops the mark as in any pause, and acks further apart than the beat
//!   (a slow broker) never set it. As the pipeline drains below that depth,
//!   the mark goes at the next read, so its last confirms are not held back.
//!   Deliveries to a consumer on the same connection come on that beat too
//!   (at most a millisecond late), the hold-off aside.
//!
//! The cost is latency while streaming: a message waits for the mark to
//! fill, half a millisecond to a millisecond, and the last bytes of a burst
//! wait for the fallback, at most a millisecond. Off with
//! [`ConnectionConfig::receive_coalescing`](crate::ConnectionConfig::receive_coalescing).
//!
//! This is policy only: it decides the mark from reads and their times, and
//! the reactor applies it to the socket.

use std::time::{Duration, Instant};

/// Arrival rates are measured over this much time with bytes flowing.
const RATE_PERIOD: Duration = Duration::from_millis(2);

/// While a mark is set, the longest the reactor waits after a read before it
/// reads again, whatever the kernel reports.
pub(super) const FALLBACK: Duration = Duration::from_millis(1);

/// A pause this long forgets the measured rate.
const FORGET_AFTER: Duration = Duration::from_millis(10);

/// The smallest mark worth setting: below it, the stream is slow enough that
/// waking per packet costs little.
const MIN_MARK: usize = 4 * 1024;

/// Confirms outstanding on a connection from which its acks are coalesced
/// (see the module docs).
pub(super) const DEEP_PIPELINE: usize = 256;

/// The largest mark (wakes at most this far apart in bytes).
const MAX_MARK: usize = 64 * 1024;

/// The mark while a deep confirm pipeline is outstanding and acks flow:
/// more than its acks bring in a fallback wait, so they are read on the
/// fallback's beat.
const DEEP_PIPELINE_MARK: usize = MAX_MARK;

/// Significant bits a mark keeps of a millisecond's bytes: three, so a mark
/// is at least four fifths of them.
const MARK_BITS: u32 = 3;

/// Stalls with no read in between that the kernel woke us for at a mark:
/// they hold marks off.
const STARVED_STALLS: u32 = 4;

/// The first hold-off after [`STARVED_STALLS`].
const FIRST_HOLD_OFF: Duration = Duration::from_millis(100);

/// The longest hold-off.
const MAX_HOLD_OFF: Duration = Duration::from_secs(3);

/// This long without starving brings the hold-off back to
/// [`FIRST_HOLD_OFF`].
const CLEAN_SPAN: Duration = Duration::from_secs(1);

/// The mark the kernel is told when coalescing is off: wake on any byte.
pub(super) const NO_MARK: usize = 1;

/// The coalescing policy of one socket.
#[derive(Debug)]
pub(super) struct ReceiveCoalescing {
    enabled: bool,
    /// The mark in force ([`NO_MARK`]: off).
    mark: usize,
    /// The mark the measured rate calls for, in force unless paused or held
    /// off.
    rate_mark: usize,
    /// A deep confirm pipeline is outstanding: its acks are read on the
    /// fallback's beat (see the module docs).
    deep: bool,
    /// Bytes, and time with bytes flowing, in the current period.
    period_bytes: usize,
    period_flowing: Duration,
    /// Stalls since the kernel last woke us for a read at a mark.
    stalls_in_a_row: u32,
    last_read: Instant,
    /// No mark before this (after [`STARVED_STALLS`]).
    held_until: Option<Instant>,
    hold_off: Duration,
    last_starved: Option<Instant>,
}

impl ReceiveCoalescing {
    /// The policy for a new socket (whose mark is the kernel's default, one
    /// byte). `enabled: false` never sets a mark.
    pub(super) fn new(enabled: bool, now: Instant) -> Self {
        ReceiveCoalescing {
            enabled,
            mark: NO_MARK,
            rate_mark: NO_MARK,
            deep: false,
            period_bytes: 0,
            period_flowing: Duration::ZERO,
            stalls_in_a_row: 0,
            last_read: now,
            held_until: None,
            hold_off: FIRST_HOLD_OFF,
            last_starved: None,
        }
    }

    /// Never sets a mark again (the socket refused one).
    pub(super) fn disable(&mut self) {
        self.enabled = false;
        self.mark = NO_MARK;
    }

    /// The mark in force.
    #[cfg(test)]
    fn mark(&self) -> usize {
        self.mark
    }

    /// Whether [`DEEP_PIPELINE`] confirms are outstanding, before a read is
    /// recorded: while they are, acks are read on the fallback's beat (see
    /// the module docs).
    pub(super) fn confirms_outstanding(&mut self, deep: bool) {
        self.deep = deep;
    }

    /// How long the next wait may last at most: while a mark is set, until
    /// [`FALLBACK`] past the last read.
    pub(super) fn max_wait(&self, now: Instant) -> Option<Duration> {
        (self.mark > NO_MARK)
            .then(|| FALLBACK.saturating_sub(now.saturating_duration_since(self.last_read)))
    }

    /// Whether the socket should be read although the kernel did not report
    /// it readable: a mark is set and the fallback wait is over.
    pub(super) fn read_due(&self, now: Instant) -> bool {
        self.mark > NO_MARK && now.saturating_duration_since(self.last_read) >= FALLBACK
    }

    /// Records a read of `bytes` (`fallback`: made because it was due, not
    /// because the socket was reported readable). Returns the new mark when
    /// it changes.
    pub(super) fn after_read(
        &mut self,
        bytes: usize,
        fallback: bool,
        now: Instant,
    ) -> Option<usize> {
        if !self.enabled {
            return None;
        }
        let since_last = now.saturating_duration_since(self.last_read);
        self.last_read = now;
        if bytes == 0 {
            // A fallback read found the stream paused: sleep until it goes on.
            self.stalls_in_a_row = 0;
            return if fallback { self.set(NO_MARK) } else { None };
        }
        if since_last >= FORGET_AFTER {
            self.rate_mark = NO_MARK;
            self.start_period();
        }
        if self.mark > NO_MARK && !self.deep {
            if fallback {
                self.stall(bytes, since_last, now);
            } else {
                // The stream reached the mark.
                self.stalls_in_a_row = 0;
            }
        }
        self.period_bytes += bytes;
        // A pause counts as one fallback wait, not as time with bytes flowing.
        self.period_flowing += since_last.min(FALLBACK);
        if self.period_flowing >= RATE_PERIOD {
            self.end_period();
        }
        if self.deep {
            // Acks closer together than the beat are read on it; a mark
            // set stays until a pause (an empty fallback read) drops it.
            let flowing = since_last < FALLBACK || self.mark == DEEP_PIPELINE_MARK;
            return self.set(if flowing { DEEP_PIPELINE_MARK } else { NO_MARK });
        }
        let held = self.held_until.is_some_and(|until| now < until);
        self.set(if held { NO_MARK } else { self.rate_mark })
    }

    /// A fallback read found `bytes` that came in `waited` without reaching
    /// the mark: lowers the mark to what they show, and holds marks off
    /// after [`STARVED_STALLS`] in a row that show too little for any mark.
    fn stall(&mut self, bytes: usize, waited: Duration, now: Instant) {
        let fit = mark_for(bytes as u128 * 1000 / waited.as_micros().max(1));
        if fit > NO_MARK {
            // A lowered mark fits what this stall shows: the kernel wakes us
            // at it next time, so a window of this size cannot starve. (A
            // bursty stream, such as many queues' deliveries on one
            // connection, stalls like this often.)
            self.rate_mark = self.rate_mark.min(fit);
            self.stalls_in_a_row = 0;
            return;
        }
        self.stalls_in_a_row += 1;
        if self.stalls_in_a_row < STARVED_STALLS {
            return;
        }
        self.stalls_in_a_row = 0;
        let clean = self
            .last_starved
            .is_none_or(|at| now.saturating_duration_since(at) >= CLEAN_SPAN);
        if clean {
            self.hold_off = FIRST_HOLD_OFF;
        }
        self.held_until = Some(now + self.hold_off);
        self.hold_off = (self.hold_off * 2).min(MAX_HOLD_OFF);
        self.last_starved = Some(now);
    }

    /// Sets the rate's mark from the period.
    fn end_period(&mut self) {
        let per_ms = self.period_bytes as u128 * 1000 / self.period_flowing.as_micros().max(1);
        if !still_fits(self.rate_mark, per_ms) {
            self.rate_mark = mark_for(per_ms);
        }
        self.start_period();
    }

    fn start_period(&mut self) {
        self.period_bytes = 0;
        self.period_flowing = Duration::ZERO;
    }

    fn set(&mut self, mark: usize) -> Option<usize> {
        (mark != self.mark).then(|| {
            self.mark = mark;
            mark
        })
    }
}

/// The mark for an arrival rate of `per_ms` bytes per millisecond: a
/// millisecond of it rounded down to [`MARK_BITS`] significant bits (so the
/// mark fills within the fallback wait, and takes at least 0.8 ms of it),
/// within [`MIN_MARK`]`..=`[`MAX_MARK`], or [`NO_MARK`].
fn mark_for(per_ms: u128) -> usize {
    let per_ms = usize::try_from(per_ms).unwrap_or(usize::MAX);
    if per_ms < MIN_MARK {
        return NO_MARK;
    }
    let dropped_bits = per_ms.ilog2().saturating_sub(MARK_BITS - 1);
    (per_ms >> dropped_bits << dropped_bits).min(MAX_MARK)
}

/// Whether `mark` still suits a rate of `per_ms` bytes per millisecond: it
/// fills within a millisecond but takes at least three quarters of one (or
/// it is [`MAX_MARK`] and the rate is higher still), and it is no smaller
/// than [`MIN_MARK`]. Keeping it spares a system call per small change of
/// rate.
fn still_fits(mark: usize, per_ms: u128) -> bool {
    let mark_wide = mark as u128;
    mark >= MIN_MARK && mark_wide <= per_ms && (mark == MAX_MARK || mark_wide * 4 >= per_ms * 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);
    /// The mark for 10,000 bytes per millisecond.
    const STREAMING_MARK: usize = 8192;

    /// Reads `bytes` every `every` for `span`, by readiness; returns the
    /// marks set along the way.
    fn stream(
        policy: &mut ReceiveCoalescing,
        start: Instant,
        every: Duration,
        bytes: usize,
        span: Duration,
    ) -> (Instant, Vec<usize>) {
        let mut now = start;
        let mut marks = Vec::new();
        while now < start + span {
            now += every;
            marks.extend(policy.after_read(bytes, false, now));
        }
        (now, marks)
    }

    #[test]
    fn a_fast_stream_gets_a_millisecond_of_bytes_as_its_mark() {
        let t0 = Instant::now();
        let mut policy = ReceiveCoalescing::new(true, t0);
        // 1,000 bytes every 100 µs: 10,000 bytes per ms, so an 8 KiB mark.
        let (now, marks) = stream(&mut policy, t0, 100 * US, 1000, 10 * MS);
        assert_eq!(marks, vec![8192]);
        assert_eq!(policy.mark(), 8192);
        assert_eq!(policy.max_wait(now), Some(FALLBACK));
        assert!(!policy.read_due(now + FALLBACK / 2));
        assert!(policy.read_due(now + FALLBACK));
    }

    #[test]
    fn the_mark_is_capped_and_follows_the_rate_down() {
        let t0 = Instant::now();
        let mut policy = ReceiveCoalescing::new(true, t0);
        let (now, marks) = stream(&mut policy, t0, 100 * US, 64 * 1024, 10 * MS);
        assert_eq!(marks, vec![MAX_MARK]);
        // 600 bytes per 100 µs: 6,000 per ms, a 5 KiB mark.
        let (now, marks) = stream(&mut policy, now, 100 * US, 600, 10 * MS);
        assert_eq!(marks, vec![5120]);
        // 300 per 100 µs: 3,000 per ms, not worth a mark.
        let (_, marks) = stream(&mut policy, now, 100 * US, 300, 10 * MS);
        assert_eq!(marks, vec![NO_MARK]);
        assert_eq!(policy.max_wait(Instant::now()), None);
    }

    #[test]
    fn a_slow_stream_never_gets_a_mark() {
        let t0 = Instant::now();
        let mut policy = ReceiveCoalescing::new(true, t0);
        let (now, marks) = stream(&mut policy, t0, MS, 3000, 100 * MS);
        assert!(marks.is_empty());
        assert!(!policy.read_due(now + 10 * FALLBACK));
    }

    /// A policy that has seen 10 ms of 1,000 bytes every 100 µs (an 8 KiB
    /// mark), and the time then.
    fn streaming() -> (ReceiveCoalescing, Instant) {
        let t0 = Instant::now();
        let mut policy = ReceiveCoalescing::new(true, t0);
        let (now, _) = stream(&mut policy, t0, 100 * US, 1000, 10 * MS);
        assert_eq!(policy.mark(), STREAMING_MARK);
        (policy, now)
    }

    /// A consumer whose prefetch window is 1,000 bytes, for `span`: without
    /// a mark the window comes every 100 µs; with one it never reaches the
    /// mark and is read by the fallback. Returns when, and the marks set.
    fn starve(
        policy: &mut ReceiveCoalescing,
        start: Instant,
        span: Duration,
    ) -> (Instant, Vec<usize>) {
        let mut now = start;
        let mut marks = Vec::new();
        while now < start + span {
            now += policy.max_wait(now).unwrap_or(100 * US);
            let due = policy.read_due(now);
            marks.extend(policy.after_read(1000, due, now));
        }
        (now, marks)
    }

    #[test]
    fn an_occasional_stall_keeps_the_mark() {
        let (mut policy, mut now) = streaming();
        let mut marks = Vec::new();
        for _ in 0..20 {
            now += FALLBACK;
            assert!(policy.read_due(now));
            marks.extend(policy.after_read(500, true, now));
            let (after, more) = stream(&mut policy, now, 100 * US, 1000, 5 * MS);
            marks.extend(more);
            now = after;
        }
        assert!(marks.iter().all(|&mark| mark > NO_MARK), "{marks:?}");
        assert_eq!(policy.mark(), STREAMING_MARK);
    }

    #[test]
    fn a_stall_brings_an_overshooting_mark_down_to_the_rate_it_shows() {
        let t0 = Instant::now();
        let mut policy = ReceiveCoalescing::new(true, t0);
        let (mut now, _) = stream(&mut policy, t0, 100 * US, 8000, 10 * MS);
        assert_eq!(policy.mark(), MAX_MARK);
        // 6,000 bytes in a millisecond: a 5 KiB mark fits.
        now += FALLBACK;
        assert_eq!(policy.after_read(6000, true, now), Some(5120));
    }

    #[test]
    fn stalls_that_carry_a_mark_lower_it_and_never_hold_it_off() {
        let (mut policy, mut now) = streaming();
        // A bursty stream: every fallback wait brings 5,000 bytes, under the
        // 8 KiB mark but enough for a 4 KiB one.
        let mut marks = Vec::new();
        for _ in 0..20 {
            now += FALLBACK;
            marks.extend(policy.after_read(5000, true, now));
        }
        assert_eq!(marks, vec![4096]);
        assert_eq!(policy.mark(), 4096);
    }

    #[test]
    fn stalls_in_a_row_drop_the_mark_and_holds_it_off_doubling() {
        let (mut policy, mut now) = streaming();
        for hold_off in [100, 200, 400] {
            assert_eq!(policy.mark(), STREAMING_MARK);
            let (after, marks) = starve(&mut policy, now, 10 * MS);
            assert_eq!(marks.last(), Some(&NO_MARK), "{marks:?}");
            // Held off: a fast stream gets no mark until the hold-off ends.
            let held = Duration::from_millis(hold_off) - 5 * MS;
            let (after, marks) = stream(&mut policy, after, 100 * US, 1000, held);
            assert!(marks.is_empty(), "{marks:?} within {hold_off} ms");
            let (after, marks) = stream(&mut policy, after, 100 * US, 1000, 10 * MS);
            assert_eq!(marks, vec![STREAMING_MARK]);
            now = after;
        }
    }

    #[test]
    fn a_mark_kept_a_second_without_starving_resets_the_hold_off() {
        let (mut policy, now) = streaming();
        let (now, _) = starve(&mut policy, now, 10 * MS);
        let (after, _) = stream(&mut policy, now, 100 * US, 1000, 110 * MS);
        assert_eq!(policy.mark(), STREAMING_MARK);
        // A second of streaming: the next starving holds off 100 ms again.
        let (now, _) = stream(&mut policy, after, 100 * US, 1000, CLEAN_SPAN + 5 * MS);
        let (now, _) = starve(&mut policy, now, 10 * MS);
        let (now, marks) = stream(&mut policy, now, 100 * US, 1000, 90 * MS);
        assert!(marks.is_empty(), "{marks:?}");
        stream(&mut policy, now, 100 * US, 1000, 20 * MS);
        assert_eq!(policy.mark(), STREAMING_MARK);
    }

    #[test]
    fn a_pause_drops_the_mark_until_the_next_bytes() {
        let (mut policy, mut now) = streaming();
        now += FALLBACK;
        assert!(policy.read_due(now));
        assert_eq!(policy.after_read(0, true, now), Some(NO_MARK));
        // Paused: no fallback wake-ups while nothing comes.
        assert_eq!(policy.max_wait(now), None);
        assert!(!policy.read_due(now + 5 * MS));
        // The first bytes after the pause bring the mark back.
        now += 5 * MS;
        assert_eq!(policy.after_read(1000, false, now), Some(STREAMING_MARK));
    }

    #[test]
    fn a_long_pause_forgets_the_rate() {
        let (mut policy, mut now) = streaming();
        now += FALLBACK;
        policy.after_read(0, true, now);
        now += FORGET_AFTER;
        assert_eq!(policy.after_read(100, false, now), None);
        assert_eq!(policy.mark(), NO_MARK);
        // A trickle after it gets no mark.
        let (_, marks) = stream(&mut policy, now, MS, 100, 20 * MS);
        assert!(marks.is_empty(), "{marks:?}");
    }

    #[test]
    fn disabled_coalescing_never_sets_a_mark() {
        let t0 = Instant::now();
        let mut policy = ReceiveCoalescing::new(false, t0);
        let (now, marks) = stream(&mut policy, t0, 10 * US, 64 * 1024, 10 * MS);
        assert!(marks.is_empty());
        assert_eq!(policy.max_wait(now), None);
        let mut refused = ReceiveCoalescing::new(true, t0);
        stream(&mut refused, t0, 100 * US, 1000, 10 * MS);
        refused.disable();
        assert_eq!(refused.mark(), NO_MARK);
        assert_eq!(refused.after_read(1000, false, now + 10 * MS), None);
    }

    #[test]
    fn a_deep_confirm_pipeline_reads_its_acks_on_the_fallback_beat_until_it_drains() {
        // About 300 bytes a millisecond: acks of a publisher with confirms.
        let t0 = Instant::now();
        let mut policy = ReceiveCoalescing::new(true, t0);
        policy.confirms_outstanding(true);
        let (mut now, marks) = stream(&mut policy, t0, 100 * US, 30, 10 * MS);
        assert_eq!(marks, vec![DEEP_PIPELINE_MARK]);
        assert!(policy.max_wait(now).is_some());
        // Fallback reads that find acks under the mark are the beat, not
        // stalls: the mark stays, however many come in a row.
        for _ in 0..4 * STARVED_STALLS {
            now += FALLBACK;
            assert!(policy.read_due(now));
            assert_eq!(policy.after_read(300, true, now), None);
        }
        assert_eq!(policy.mark(), DEEP_PIPELINE_MARK);
        // A fallback read that finds nothing is a pause: the mark goes, and
        // comes back with acks less than a beat apart.
        now += FALLBACK;
        assert_eq!(policy.after_read(0, true, now), Some(NO_MARK));
        now += 5 * MS;
        assert_eq!(policy.after_read(21, false, now), None);
        now += 200 * US;
        assert_eq!(policy.after_read(21, false, now), Some(DEEP_PIPELINE_MARK));
        // Fewer than `DEEP_PIPELINE` outstanding: the next read drops it.
        policy.confirms_outstanding(false);
        assert_eq!(policy.after_read(30, false, now + 100 * US), Some(NO_MARK));
        // The same stream without a deep pipeline never gets a mark.
        let mut shallow = ReceiveCoalescing::new(true, t0);
        let (_, marks) = stream(&mut shallow, t0, 100 * US, 30, 10 * MS);
        assert!(marks.is_empty());
    }

    #[test]
    fn acks_further_apart_than_the_beat_never_get_a_mark() {
        // A slow broker: one ack every 3 ms with a deep pipeline.
        let t0 = Instant::now();
        let mut policy = ReceiveCoalescing::new(true, t0);
        policy.confirms_outstanding(true);
        let (_, marks) = stream(&mut policy, t0, 3 * MS, 21, 100 * MS);
        assert!(marks.is_empty(), "{marks:?}");
    }

    #[test]
    fn a_steady_stream_keeps_its_mark_through_small_changes_of_rate() {
        let (mut policy, now) = streaming();
        // 9,000 and 10,500 bytes per ms: 8 KiB still takes 0.78-0.91 ms.
        let (now, marks) = stream(&mut policy, now, 100 * US, 900, 20 * MS);
        assert!(marks.is_empty(), "{marks:?}");
        let (now, marks) = stream(&mut policy, now, 100 * US, 1050, 20 * MS);
        assert!(marks.is_empty(), "{marks:?}");
        // 12,000: 8 KiB would take only 0.68 ms; 10 KiB takes 0.85.
        let (now, marks) = stream(&mut policy, now, 100 * US, 1200, 20 * MS);
        assert_eq!(marks, vec![10_240]);
        // 7,500: 10 KiB no longer fills in a millisecond; 7 KiB does.
        let (_, marks) = stream(&mut policy, now, 100 * US, 750, 20 * MS);
        assert_eq!(marks, vec![7168]);
    }

    #[test]
    fn marks_keep_three_significant_bits_within_bounds() {
        assert_eq!(mark_for(0), NO_MARK);
        assert_eq!(mark_for(4095), NO_MARK);
        assert_eq!(mark_for(4096), 4096);
        assert_eq!(mark_for(7680), 7168);
        assert_eq!(mark_for(12_000), 10_240);
        assert_eq!(mark_for(16_384), 16_384);
        for per_ms in (4096..200_000).step_by(97) {
            let mark = mark_for(per_ms) as u128;
            assert!(
                mark <= per_ms && (mark * 5 >= per_ms * 4 || mark == 65_536),
                "{per_ms}"
            );
        }
        assert_eq!(mark_for(100_000), MAX_MARK);
        assert_eq!(mark_for(u128::MAX), MAX_MARK);
    }
}
