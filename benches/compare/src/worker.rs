//! The worker side: one client, one scenario, one measurement, in a process
//! of its own.
//!
//! The coordinator starts `warren-compare --worker CLIENT SCENARIO SIZE
//! MESSAGES QUEUE_PREFIX QUEUES URI`. The worker connects and sets up (not
//! timed), prints `@@go` and starts counting its CPU time, does the work,
//! prints `@@done`, and waits for `stop` on its stdin: the coordinator
//! sends it once the scenario is complete (for the publish scenarios, once
//! the queue holds every message). CPU time is counted up to `stop`, so work
//! a client's background threads or tasks still do after `@@done` (flushing
//! its write buffer) counts too. Then it prints `@@result ...` and closes its
//! connection (not timed).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{clients, Res, Scenario};

/// What one worker run does.
#[derive(Debug, Clone)]
pub struct Job {
    /// The scenario.
    pub scenario: Scenario,
    /// Body size in bytes.
    pub size: usize,
    /// Messages in all (for many-queues: `per_queue * queues.len()`).
    pub messages: u64,
    /// The queues: one, or for many-queues one per consumer.
    pub queues: Vec<String>,
    /// The broker's URI.
    pub uri: String,
}

impl Job {
    /// Messages per queue.
    pub fn per_queue(&self) -> u64 {
        self.messages / self.queues.len() as u64
    }

    /// Messages per queue the harness publishes before timing: all of them
    /// for the consume scenarios, the first [`crate::MAX_BACKLOG`] for
    /// long-consume (the rest go in while the worker consumes), none for the
    /// publish scenarios.
    pub fn prefill(&self) -> u64 {
        match self.scenario {
            Scenario::Consume | Scenario::ManyQueues => self.per_queue(),
            Scenario::LongConsume => self.per_queue().min(crate::MAX_BACKLOG),
            Scenario::Publish | Scenario::PublishConfirm => 0,
        }
    }

    /// The body every publisher sends.
    pub fn body(&self) -> Vec<u8> {
        vec![b'x'; self.size]
    }
}

/// Whether a consumer that has received `received` of `total` messages acks
/// now (with `multiple`).
pub fn ack_now(received: u64, total: u64) -> bool {
    received.is_multiple_of(crate::ACK_EVERY) || received == total
}

/// `argv` of a worker, after `--worker`.
pub fn args(job: &Job, client: &str, queue_prefix: &str) -> Vec<String> {
    vec![
        "--worker".into(),
        client.into(),
        job.scenario.name().into(),
        job.size.to_string(),
        job.messages.to_string(),
        queue_prefix.into(),
        job.queues.len().to_string(),
        job.uri.clone(),
    ]
}

/// The queue names the coordinator declares for a job.
pub fn queue_names(prefix: &str, count: usize) -> Vec<String> {
    if count == 1 {
        vec![prefix.to_string()]
    } else {
        (0..count).map(|i| format!("{prefix}-{i}")).collect()
    }
}

pub fn main(args: &[String]) -> ExitCode {
    let parsed = (|| -> Res<(String, Job)> {
        let [client, scenario, size, messages, prefix, queues, uri] = args else {
            return Err("usage: --worker CLIENT SCENARIO SIZE MESSAGES PREFIX QUEUES URI".into());
        };
        let scenario = Scenario::parse(scenario).ok_or("unknown scenario")?;
        let job = Job {
            scenario,
            size: size.parse()?,
            messages: messages.parse()?,
            queues: queue_names(prefix, queues.parse()?),
            uri: uri.clone(),
        };
        Ok((client.clone(), job))
    })();
    let (client, job) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("worker: {e}");
            return ExitCode::from(2);
        }
    };
    let mut signal = Signal::new(&job);
    match clients::run(&client, &job, &mut signal) {
        Ok(()) if signal.result.is_some() => ExitCode::SUCCESS,
        Ok(()) => {
            eprintln!("worker {client}: finished without measuring");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("worker {client} {}: {e}", job.scenario.name());
            ExitCode::FAILURE
        }
    }
}

/// User + system CPU time of this process (all threads) in µs, its peak
/// RSS in KiB, and how often its threads went to sleep to wait (voluntary
/// context switches).
pub fn rusage() -> (u64, u64, u64) {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (
        micros(usage.ru_utime) + micros(usage.ru_stime),
        usage.ru_maxrss as u64,
        usage.ru_nvcsw as u64,
    )
}

/// A worker's side of the protocol with the coordinator, and what it
/// measures.
pub struct Signal {
    start_cpu: u64,
    start_sleeps: u64,
    stop: Option<futures::channel::oneshot::Receiver<()>>,
    counts: Arc<Vec<AtomicU64>>,
    sampler: Option<(mpsc::Sender<()>, JoinHandle<Vec<u64>>)>,
    memory: Option<MemoryWatch>,
    watch_memory: bool,
    result: Option<()>,
}

impl Signal {
    fn new(job: &Job) -> Signal {
        let queues = job.queues.len();
        let (tx, rx) = futures::channel::oneshot::channel();
        // stdin is read on a thread of its own, so an async client's runtime
        // thread never blocks on it.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            let _ = tx.send(());
        });
        Signal {
            start_cpu: 0,
            start_sleeps: 0,
            stop: Some(rx),
            counts: Arc::new((0..queues).map(|_| AtomicU64::new(0)).collect()),
            sampler: None,
            memory: None,
            watch_memory: job.scenario == Scenario::LongConsume,
            result: None,
        }
    }

    /// Per-queue delivery counters (many-queues); the fairness index is
    /// taken over them one second after [`Signal::go`].
    pub fn counts(&self) -> Arc<Vec<AtomicU64>> {
        self.counts.clone()
    }

    /// Setup is done: timing starts now.
    pub fn go(&mut self) {
        let counts = self.counts.clone();
        let (tx, rx) = mpsc::channel::<()>();
        let sampler = std::thread::spawn(move || {
            // One second, or less if the run ends first (then the counts are final).
            let _ = rx.recv_timeout(Duration::from_secs(1));
            counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
        });
        self.sampler = Some((tx, sampler));
        if self.watch_memory {
            self.memory = Some(MemoryWatch::start(self.counts.clone()));
        }
        (self.start_cpu, _, self.start_sleeps) = rusage();
        line("@@go");
    }

    /// The work is done; waits (blocking the thread) for the coordinator's `stop`.
    pub fn finish(&mut self) {
        line("@@done");
        if let Some(stop) = self.stop.take() {
            let _ = futures::executor::block_on(stop);
        }
        self.report();
    }

    /// The work is done; waits (asynchronously) for the coordinator's `stop`.
    pub async fn finish_async(&mut self) {
        line("@@done");
        if let Some(stop) = self.stop.take() {
            let _ = stop.await;
        }
        self.report();
    }

    fn report(&mut self) {
        let (cpu, maxrss, sleeps) = rusage();
        // ru_maxrss carries over the peak of the process that spawned this
        // one (Linux keeps it across exec), so the harness's own peak would
        // show; VmHWM is this address space's own.
        let peak_kb = vm_hwm_kb().unwrap_or(maxrss);
        let first_second = match self.sampler.take() {
            Some((done, sampler)) => {
                let _ = done.send(());
                sampler.join().unwrap_or_default()
            }
            None => vec![],
        };
        let mut result = format!(
            "@@result cpu_us={} peak_rss_kb={peak_kb} sleeps={} jain={:.4}",
            cpu - self.start_cpu,
            sleeps - self.start_sleeps,
            jain(&first_second)
        );
        if let Some(memory) = self.memory.take() {
            let readings = memory.stop();
            let readings: Vec<String> = readings
                .iter()
                .map(|(received, rss, anon)| format!("{received}:{rss}:{anon}"))
                .collect();
            let _ = write!(result, " rss_kb_at={}", readings.join(","));
        }
        line(&result);
        self.result = Some(());
    }
}

/// Reads the worker's resident set size as its consumer passes the memory
/// marks (`long-consume`): a thread that looks at the delivery counter
/// every millisecond.
struct MemoryWatch {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<Vec<(u64, u64, u64)>>,
}

impl MemoryWatch {
    fn start(counts: Arc<Vec<AtomicU64>>) -> MemoryWatch {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut readings = Vec::new();
            let mut mark = crate::MEMORY_FIRST_MARK;
            loop {
                let received: u64 = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
                if received >= mark {
                    if let (Some(rss), Some(anon)) =
                        (vm_status_kb("VmRSS:"), vm_status_kb("RssAnon:"))
                    {
                        readings.push((received, rss, anon));
                    }
                    mark = next_memory_mark(received);
                }
                match stopped.recv_timeout(Duration::from_millis(1)) {
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            }
            readings
        });
        MemoryWatch { stop, thread }
    }

    /// Stops watching; the readings as (messages received, RSS in KiB,
    /// its anonymous part in KiB: heap, stacks, buffers, without the
    /// program's and libraries' mapped files).
    fn stop(self) -> Vec<(u64, u64, u64)> {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or_default()
    }
}

/// The first memory mark past `received`: 1 M, 2 M, ... (after the first
/// at 100k).
fn next_memory_mark(received: u64) -> u64 {
    (received / crate::MEMORY_STEP + 1) * crate::MEMORY_STEP
}

/// The peak resident set size of this process's own address space
/// (`VmHWM` in /proc/self/status), in KiB.
pub fn vm_hwm_kb() -> Option<u64> {
    vm_status_kb("VmHWM:")
}

/// One `kB` field of /proc/self/status (`VmRSS:`, `VmHWM:`), in KiB.
fn vm_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Jain's fairness index: 1 when every count is equal, 1/n when one queue
/// got everything.
pub fn jain(counts: &[u64]) -> f64 {
    let sum: f64 = counts.iter().map(|&c| c as f64).sum();
    let squares: f64 = counts.iter().map(|&c| (c as f64) * (c as f64)).sum();
    if squares == 0.0 {
        return 0.0;
    }
    sum * sum / (counts.len() as f64 * squares)
}

/// Publisher-confirm bookkeeping for the clients that hand out raw
/// basic.ack / basic.nack frames (amqprs, amiquip): how many of the tags
/// 1, 2, ... are confirmed without a gap.
#[derive(Debug, Default)]
pub struct Confirms {
    upto: u64,
    singles: BTreeSet<u64>,
    /// Whether any message was nacked.
    pub nacked: bool,
}

impl Confirms {
    /// Takes a basic.ack (or nack) for `tag`.
    pub fn confirm(&mut self, tag: u64, multiple: bool, ack: bool) {
        self.nacked |= !ack;
        if multiple {
            self.upto = self.upto.max(tag);
            while self.singles.first().is_some_and(|&t| t <= self.upto) {
                self.singles.pop_first();
            }
        } else if tag > self.upto {
            self.singles.insert(tag);
        }
        while self.singles.first() == Some(&(self.upto + 1)) {
            self.singles.pop_first();
            self.upto += 1;
        }
    }

    /// Every tag up to this one is confirmed.
    pub fn upto(&self) -> u64 {
        self.upto
    }
}

/// The parts of an `amqp://user:pass@host:port/vhost` URI (for amqprs,
/// which takes them one by one).
pub struct UriParts {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
}

impl UriParts {
    pub fn parse(uri: &str) -> Res<UriParts> {
        let rest = uri
            .strip_prefix("amqp://")
            .ok_or("only amqp:// URIs are supported")?;
        let rest = rest.split('?').next().unwrap_or_default();
        let (authority, vhost) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = authority
            .rsplit_once('@')
            .unwrap_or(("guest:guest", authority));
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((host, port)) => (host, port.parse()?),
            None => (hostport, 5672),
        };
        let vhost = match vhost {
            "" => "/".to_string(),
            v => percent_decode(v)?,
        };
        Ok(UriParts {
            host: host.to_string(),
            port,
            user: percent_decode(user)?,
            password: percent_decode(password)?,
            vhost,
        })
    }
}

fn percent_decode(text: &str) -> Res<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or("bad percent escape")?;
            out.push(u8::from_str_radix(hex, 16)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_is_one_when_fair_and_one_over_n_when_not() {
        assert!((jain(&[5, 5, 5, 5]) - 1.0).abs() < 1e-9);
        assert!((jain(&[20, 0, 0, 0]) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn confirms_close_gaps_and_honour_multiple() {
        let mut c = Confirms::default();
        c.confirm(2, false, true);
        assert_eq!(c.upto(), 0);
        c.confirm(1, false, true);
        assert_eq!(c.upto(), 2);
        c.confirm(5, false, true);
        c.confirm(4, true, true);
        assert_eq!(c.upto(), 5);
        assert!(!c.nacked);
        c.confirm(6, false, false);
        assert!(c.nacked);
    }

    #[test]
    fn memory_marks_step_by_a_million_after_the_first() {
        assert_eq!(next_memory_mark(100_000), 1_000_000);
        assert_eq!(next_memory_mark(1_000_000), 2_000_000);
        assert_eq!(next_memory_mark(1_999_999), 2_000_000);
    }

    #[test]
    fn uri_parts() {
        let p = UriParts::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.user.as_str(), p.vhost.as_str()),
            ("127.0.0.1", 5672, "guest", "/")
        );
    }
}
