//! Samples, medians, the machine description, and the two outputs:
//! `RESULTS.md` (tables of medians) and `results.csv` (every run, then the
//! medians).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use crate::coordinator::Options;
use crate::{Res, Scenario, CLIENTS};

/// The pinned versions of the peers (Cargo.toml pins them with `=`).
pub const PEER_VERSIONS: [(&str, &str); 3] = [
    ("lapin", "4.12.3"),
    ("amqprs", "2.1.5"),
    ("amiquip", "0.4.2"),
];

/// One measurement: one client, one scenario, one size, one run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub client: String,
    pub scenario: Scenario,
    pub size: usize,
    pub run: usize,
    pub messages: u64,
    pub wall: Duration,
    pub cpu_us: u64,
    pub peak_rss_kb: u64,
    /// How often the worker's threads went to sleep to wait (voluntary
    /// context switches) over the timed span.
    pub sleeps: Option<u64>,
    pub jain: Option<f64>,
    pub broker_cpu_us: Option<u64>,
    /// CPU time of everything else on the machine over the timed span
    /// (not the worker, not the broker): other people's load.
    pub other_cpu_us: Option<u64>,
    /// long-consume: the worker's RSS and its anonymous part (KiB) as it
    /// passed each memory mark, after the messages it had received then.
    pub rss_kb_at: Vec<(u64, u64, u64)>,
    pub error: Option<String>,
}

impl Sample {
    pub fn new(client: &str, scenario: Scenario, size: usize, run: usize, messages: u64) -> Sample {
        Sample {
            client: client.to_string(),
            scenario,
            size,
            run,
            messages,
            wall: Duration::ZERO,
            cpu_us: 0,
            peak_rss_kb: 0,
            sleeps: None,
            jain: None,
            broker_cpu_us: None,
            other_cpu_us: None,
            rss_kb_at: Vec::new(),
            error: None,
        }
    }

    fn rate(&self) -> f64 {
        self.messages as f64 / self.wall.as_secs_f64()
    }

    fn cpu_per_message(&self) -> f64 {
        self.cpu_us as f64 / self.messages as f64
    }

    /// Sleeps (each one a wake-up later) per 1,000 messages.
    fn sleeps_per_thousand(&self) -> Option<f64> {
        self.sleeps
            .map(|n| n as f64 * 1000.0 / self.messages as f64)
    }

    fn rss_mib(&self) -> f64 {
        self.peak_rss_kb as f64 / 1024.0
    }

    /// Broker CPU time over wall time, in percent of one core.
    fn broker_share(&self) -> Option<f64> {
        self.broker_cpu_us
            .map(|us| us as f64 / 1e4 / self.wall.as_secs_f64())
    }

    /// Everything else's CPU time over wall time, in percent of one core.
    fn other_share(&self) -> Option<f64> {
        self.other_cpu_us
            .map(|us| us as f64 / 1e4 / self.wall.as_secs_f64())
    }

    pub fn label(&self) -> String {
        format!(
            "{:<16} {:>5} B  run {}  {:<13}",
            self.scenario.name(),
            self.size,
            self.run + 1,
            self.client
        )
    }

    pub fn line(&self) -> String {
        let mut line = format!(
            "{}  {:>9.0} msgs/s  {:>6.2} µs CPU/msg  {:>6.1} MiB",
            self.label(),
            self.rate(),
            self.cpu_per_message(),
            self.rss_mib()
        );
        if let Some(sleeps) = self.sleeps_per_thousand() {
            let _ = write!(line, "  {sleeps:>5.1} sleeps/1k");
        }
        if let Some(share) = self.broker_share() {
            let _ = write!(line, "  broker {share:>3.0}%");
        }
        if let Some(share) = self.other_share() {
            let _ = write!(line, "  other {share:>3.0}%");
        }
        if let Some(jain) = self.jain {
            let _ = write!(line, "  jain {jain:.3}");
        }
        line
    }
}

/// The medians of one client, scenario and size.
struct Median {
    rate: f64,
    cpu: f64,
    rss: f64,
    sleeps: Option<f64>,
    broker: Option<f64>,
    other: Option<f64>,
    jain: Option<f64>,
    ok: usize,
    runs: usize,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

fn medians(samples: &[&Sample]) -> Option<Median> {
    let ok: Vec<&&Sample> = samples.iter().filter(|s| s.error.is_none()).collect();
    let column =
        |f: &dyn Fn(&Sample) -> Option<f64>| median(ok.iter().filter_map(|s| f(s)).collect());
    Some(Median {
        rate: column(&|s| Some(s.rate()))?,
        cpu: column(&|s| Some(s.cpu_per_message()))?,
        rss: column(&|s| Some(s.rss_mib()))?,
        sleeps: column(&|s| s.sleeps_per_thousand()),
        broker: column(&|s| s.broker_share()),
        other: column(&|s| s.other_share()),
        jain: column(&|s| s.jain),
        ok: ok.len(),
        runs: samples.len(),
    })
}

/// What the results were measured on.
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub rabbitmq: String,
    pub kernel: String,
    pub rustc: String,
    pub date: String,
    pub warren: String,
}

impl Machine {
    pub fn probe(connection: &warren::blocking::Connection) -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let rabbitmq = command("rabbitmqctl", &["version"])
            .and_then(|out| {
                out.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| l.trim().to_string())
            })
            .or_else(|| {
                connection
                    .server_properties()
                    .get("version")
                    .and_then(|v| v.as_str().map(String::from))
            })
            .unwrap_or_else(|| "unknown".into());
        let commit = command(
            "git",
            &[
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "rev-parse",
                "--short",
                "HEAD",
            ],
        );
        let dirty = command(
            "git",
            &[
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "status",
                "--porcelain",
                "--",
                "../../src",
            ],
        )
        .is_some_and(|s| !s.trim().is_empty());
        let warren = match commit {
            Some(commit) => format!(
                "warren (path dependency) at commit {}{}",
                commit.trim(),
                if dirty {
                    " with uncommitted changes in src/"
                } else {
                    ""
                }
            ),
            None => "warren (path dependency)".into(),
        };
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            rabbitmq,
            kernel: command("uname", &["-sr"])
                .map_or_else(|| "unknown".into(), |s| s.trim().to_string()),
            rustc: command("rustc", &["--version"])
                .map_or_else(|| "unknown".into(), |s| s.trim().to_string()),
            date: command("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
                .map_or_else(|| "unknown".into(), |s| s.trim().to_string()),
            warren,
        }
    }
}

impl Machine {
    /// The report's line on what was built: warren's commit, the peers'
    /// versions, the compiler.
    fn clients_line(&self) -> String {
        let peers: Vec<String> = PEER_VERSIONS
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        format!(
            "- Clients: {}; {}; rabbitmq-c {} (Debian's librabbitmq, through FFI declarations in `src/clients/rabbitmq_c.rs`); built with {}, release profile.",
            self.warren,
            peers.join(", "),
            crate::clients::rabbitmq_c::version(),
            self.rustc
        )
    }
}

fn command(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The pid of the broker's Erlang VM (`beam.smp`), if it runs here.
pub fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == "beam.smp").then_some(pid)
        })
}

/// CPU time spent by the whole machine (all cores, every process) so far,
/// in µs, from /proc/stat.
pub fn machine_cpu_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum::<u64>();
    Some(busy * 1_000_000 / clock_ticks()?)
}

fn clock_ticks() -> Option<u64> {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then_some(hz as u64)
}

/// User + system CPU time of process `pid` in µs, from /proc/PID/stat.
pub fn process_cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 1_000_000 / clock_ticks()?)
}

/// How each client was driven (also the module docs of `src/clients/`).
const DRIVEN: &str = "\
| client | runtime | publish | publish-confirm | consume | many-queues |
| --- | --- | --- | --- | --- | --- |
| warren | blocking facade, default connection settings (so receive coalescing on; a waiting call drives the I/O itself, else its reactor thread does) | `basic_publish` in a loop (returns once queued for the socket) | `basic_publish_confirmed` handles in a FIFO; once 1000 are outstanding, wait for the oldest | `Consumer::recv` in a loop, `basic_ack(tag, multiple)` every 100 | one channel per queue, one `ConsumerSet` over their consumers (`ConsumerSet::consume`, the consumes sent at once) drained by one thread (`recv` + ack on the delivery's channel as in consume) |
| warren-async | async facade on a tokio current-thread runtime with warren's `tokio` feature (the awaiting task drives the connection; warren's reactor thread looks in every few ms), default connection settings | `basic_publish(..).await` in a loop (completes once queued, so it pipelines) | `basic_publish_confirmed(..).await` gives a `Call`; FIFO of calls, await the oldest once 1000 are outstanding | `StreamExt::next` on the consumer, `basic_ack` every 100 | one channel per queue, one `ConsumerSet` over their consumers (`ConsumerSet::consume`) drained by one task (`StreamExt::next` + ack on the delivery's channel) |
| lapin | tokio current-thread runtime (plus lapin's own I/O-loop thread) | `basic_publish` futures run concurrently with `buffer_unordered(1000)` (each resolves when lapin has written it; awaiting one by one would serialise on the I/O loop) | the same stream, each future also awaiting its `PublisherConfirm`: at most 1000 confirms outstanding | `StreamExt::next` on the consumer; each multiple-ack (`Channel::basic_ack`) is spawned as a task so the consumer does not wait for it to be written | one tokio task per queue |
| amqprs | tokio current-thread runtime (its reader, writer, channel and consumer tasks share it) | `basic_publish(..).await` in a loop (completes once handed to its writer task); it takes the body as an owned `Vec<u8>`, so one copy per message | no per-message confirm future: a `ChannelCallback` counts `publish_ack`/`publish_nack` (honouring `multiple`) and the publisher waits on a `Notify` whenever 1000 are outstanding | `basic_consume_rx` receiver, `basic_ack(..).await` every 100 | one tokio task per queue |
| amiquip | blocking (its own mio I/O thread) | `basic_publish` in a loop | confirms come as raw acks on the crossbeam receiver of `listen_for_publisher_confirms`; drained without blocking after each publish, blocking on it when 1000 are outstanding | the consumer's crossbeam receiver, `ack_multiple` every 100 | one thread per queue, each owning its channel (amiquip channels are not `Sync`) |
| rabbitmq-c | blocking, single-threaded C (no I/O thread; every call does its own I/O) | `amqp_basic_publish` in a loop (one `send` per message) | the same; after each publish, the acks already in its receive buffer are read (`amqp_data_in_buffer`, no system call), and once 1000 are outstanding it blocks in `amqp_simple_wait_frame` | `amqp_consume_message` in a loop (envelope destroyed, buffers released after each), `amqp_basic_ack(multiple)` every 100 | one channel per queue on the one connection, every basic.consume sent with `nowait` (`amqp_send_method`; waiting for each consume-ok, as `amqp_basic_consume` does, slowed it to about 100 msgs/s), all drained by the same `amqp_consume_message` loop (it returns the next delivery of any channel), acking on the delivery's channel |
";

const METHOD: &str = "\
- Every measurement runs in a fresh worker process (the harness re-executes itself with a hidden `--worker` subcommand), so CPU time and peak RSS belong to that client alone. The worker connects and sets up untimed, then says go; timing ends when the work is complete, and the worker's `getrusage(RUSAGE_SELF)` user + system time is taken over the same span (all its threads, runtime included). Peak RSS is the worker's `ru_maxrss` (whole process life, setup included). The sleeps /1k msgs column counts how often the worker's threads went to sleep to wait (`ru_nvcsw`, voluntary context switches, over the same span) per 1,000 messages: each is a wake-up later, so it shows how well a client batches, and much of a run's CPU time goes with it.
- `publish`, `publish-confirm`: one connection, one channel, N messages of S bytes (no properties) to a fresh, non-durable queue through the default exchange. Timed from go until the queue holds all N: the harness polls with a passive `queue.declare` on its own connection, every 1 ms once the worker says it has handed over its last message (and, with confirms, received every confirm).
- `consume`: the worker takes the queue that the same client's publish-confirm measurement just filled with N messages (same size and run; identical messages whoever published them), checked to hold all N; when that measurement failed, or runs without publish-confirm, the harness fills a queue with N messages itself (warren, with confirms, over two connections) before the worker starts. The worker sets basic.qos prefetch 1000, then go, then `basic.consume` (manual ack); timed until it has received all N and sent its last ack (`multiple = true` every 100 deliveries).
- `many-queues`: the harness fills Q queues (default 200) with N/Q messages each (over two connections, with confirms). The Q queues are declared once, by the first many-queues measurement, and every later one fills them again after the one before drained them (checked; a queue found holding anything is purged first, and a failed measurement's queues are deleted); declaring and deleting 200 queues took 0.8 s a measurement. The worker opens one channel per queue (each with basic.qos prefetch 1000), then go, then one consumer per queue, acking `multiple` every 100 per channel; timed until every queue is drained. Jain's fairness index is taken over the per-queue delivery counts one second after go (or at the end, if the run is shorter: then it is 1).
- Order: for each scenario, for each size, for each run, every client once (round-robin, the first client rotating from run to run). Medians are per column (rate, CPU, RSS, broker share and Jain's index each take their own median over the runs).
- Broker CPU: the `beam.smp` process's user + system time (from /proc, 10 ms ticks) over the timed span, as a percentage of one core. Other load: the machine's busy time (/proc/stat) over the same span, less the worker's and the broker's, as a percentage of one core: anything well above a few percent means something else on this shared machine competed for the two cores during that run.
- Before each measurement the harness waits (at most 1 s) for the broker to go quiet (under 20% of a core over 100 ms) after the previous clean-up or fill. One untimed warm-up measurement runs first.
- The broker and the clients share the machine's cores, so wall-clock throughput is partly the broker's; client CPU µs per message is the figure that is the client's own.
";

/// Writes RESULTS.md and results.csv into `options.out`.
pub fn write(options: &Options, machine: &Machine, samples: &[Sample], elapsed: Duration) -> Res {
    std::fs::create_dir_all(&options.out)?;
    // Group: scenario -> size -> client (in CLIENTS order).
    let mut groups: BTreeMap<(usize, usize, usize), Vec<&Sample>> = BTreeMap::new();
    for sample in samples {
        let scenario = Scenario::ALL
            .iter()
            .position(|&s| s == sample.scenario)
            .unwrap_or(0);
        let client = CLIENTS
            .iter()
            .position(|&c| c == sample.client)
            .unwrap_or(0);
        groups
            .entry((scenario, sample.size, client))
            .or_default()
            .push(sample);
    }

    let mut md = String::new();
    let _ = writeln!(md, "# warren-compare results\n");
    let _ = writeln!(
        md,
        "Written by `cargo run --release -p warren-compare{}` on {} ({:.0} s in all). \
         See [README.md](README.md) for what is measured and how.\n",
        if options.messages == 200_000 && options.runs == 3 {
            ""
        } else {
            " -- ..."
        },
        machine.date,
        elapsed.as_secs_f64()
    );
    let _ = writeln!(md, "- N = {} messages per measurement; sizes {}; {} run(s) per client, scenario and size; medians shown.",
        options.messages,
        options.sizes.iter().map(|s| format!("{s} B")).collect::<Vec<_>>().join(" and "),
        options.runs);
    let _ = writeln!(md, "- Machine: {} CPUs (nproc), {}; {}; RabbitMQ {} on the same machine (`rabbitmqctl version`).",
        machine.cpus, machine.cpu_model, machine.kernel, machine.rabbitmq);
    let _ = writeln!(md, "{}", machine.clients_line());
    let _ = writeln!(md, "- Many-queues: {} queues; broker CPU is `beam.smp`'s share of one core over the timed span.\n", options.queues);
    let other = median(
        samples
            .iter()
            .filter(|s| s.error.is_none())
            .filter_map(Sample::other_share)
            .collect(),
    );
    if let Some(other) = other.filter(|&o| o > 20.0) {
        let _ = writeln!(
            md,
            "**Noisy run:** other processes on this shared machine used a median {other:.0}% of a core \
             during the timed spans (column \"other load %\"), competing with the clients and the broker \
             for the two cores. Throughput is the most affected; CPU µs per message less so, but \
             still inflated by cache and scheduling interference. Rerun on a quiet machine for \
             figures to quote.\n"
        );
    }

    for (index, scenario) in Scenario::ALL.iter().enumerate() {
        if !options.scenarios.contains(scenario) {
            continue;
        }
        let _ = writeln!(md, "## {}\n", scenario.name());
        let many = *scenario == Scenario::ManyQueues;
        let _ = writeln!(
            md,
            "| client | size | msgs/s | CPU µs/msg | sleeps /1k msgs | peak RSS MiB | broker CPU % | other load %{} |",
            if many { " | Jain (1st s)" } else { "" }
        );
        let _ = writeln!(
            md,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---:{} |",
            if many { " | ---:" } else { "" }
        );
        for ((s, size, client), group) in &groups {
            if *s != index {
                continue;
            }
            let name = CLIENTS[*client];
            match medians(group) {
                Some(m) => {
                    let failed = if m.ok < m.runs {
                        format!(" ({} of {} runs failed)", m.runs - m.ok, m.runs)
                    } else {
                        String::new()
                    };
                    let _ = write!(
                        md,
                        "| {name}{failed} | {} | {:.0} | {:.2} | {} | {:.1} | {} | {} |",
                        size_label(*size),
                        m.rate,
                        m.cpu,
                        m.sleeps.map_or("-".into(), |n| format!("{n:.1}")),
                        m.rss,
                        m.broker.map_or("-".into(), |b| format!("{b:.0}")),
                        m.other.map_or("-".into(), |b| format!("{b:.0}"))
                    );
                    if many {
                        let _ = write!(
                            md,
                            " {} |",
                            m.jain.map_or("-".into(), |j| format!("{j:.3}"))
                        );
                    }
                    let _ = writeln!(md);
                }
                None => {
                    let error = group
                        .iter()
                        .find_map(|s| s.error.clone())
                        .unwrap_or_default();
                    let _ = writeln!(
                        md,
                        "| {name} | {} | failed: {} | | | | |{}",
                        size_label(*size),
                        error.replace('|', "/"),
                        if many { " |" } else { "" }
                    );
                }
            }
        }
        let _ = writeln!(md);
    }

    let _ = writeln!(md, "## warren against the best peer\n");
    let _ = writeln!(md, "Per scenario and size: the best (lowest) client CPU per message and the best throughput among lapin, amqprs and amiquip, and warren's (blocking, async) as a ratio of them; then rabbitmq-c's CPU per message and warren's (blocking) as a ratio of it. CPU ratio below 1 and rate ratio above 1 favour warren.\n");
    let _ = writeln!(md, "| scenario | size | best peer CPU µs/msg | warren CPU ratio | warren-async CPU ratio | best peer msgs/s | warren rate ratio | warren-async rate ratio | rabbitmq-c CPU µs/msg | warren ÷ rabbitmq-c CPU |");
    let _ = writeln!(
        md,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (index, scenario) in Scenario::ALL.iter().enumerate() {
        if !options.scenarios.contains(scenario) {
            continue;
        }
        for &size in &options.sizes {
            let of = |client: &str| {
                let c = CLIENTS.iter().position(|&x| x == client)?;
                medians(groups.get(&(index, size, c))?)
            };
            let peers: Vec<(&str, Median)> = ["lapin", "amqprs", "amiquip"]
                .into_iter()
                .filter_map(|p| of(p).map(|m| (p, m)))
                .collect();
            let Some(best_cpu) = peers.iter().min_by(|a, b| a.1.cpu.total_cmp(&b.1.cpu)) else {
                continue;
            };
            let Some(best_rate) = peers.iter().max_by(|a, b| a.1.rate.total_cmp(&b.1.rate)) else {
                continue;
            };
            let cpu_ratio =
                |c: &str| of(c).map_or("-".into(), |m| format!("{:.2}", m.cpu / best_cpu.1.cpu));
            let rate_ratio =
                |c: &str| of(c).map_or("-".into(), |m| format!("{:.2}", m.rate / best_rate.1.rate));
            let c_client = of("rabbitmq-c");
            let c_cpu = c_client
                .as_ref()
                .map_or("-".into(), |m| format!("{:.2}", m.cpu));
            let against_c = match (of("warren"), &c_client) {
                (Some(w), Some(c)) => format!("{:.2}", w.cpu / c.cpu),
                _ => "-".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} ({}) | {} | {} | {:.0} ({}) | {} | {} | {} | {} |",
                scenario.name(),
                size_label(size),
                best_cpu.1.cpu,
                best_cpu.0,
                cpu_ratio("warren"),
                cpu_ratio("warren-async"),
                best_rate.1.rate,
                best_rate.0,
                rate_ratio("warren"),
                rate_ratio("warren-async"),
                c_cpu,
                against_c,
            );
        }
    }
    let _ = writeln!(md);

    let failures: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
    if !failures.is_empty() {
        let _ = writeln!(md, "## Failed runs\n");
        for s in failures {
            let _ = writeln!(
                md,
                "- {}: {}",
                s.label().split_whitespace().collect::<Vec<_>>().join(" "),
                s.error.as_deref().unwrap_or_default()
            );
        }
        let _ = writeln!(md);
    }

    // The targets warren misses, with the profile and the reason: written
    // by hand in ANALYSIS.md next to this crate, carried into every report.
    let analysis = concat!(env!("CARGO_MANIFEST_DIR"), "/ANALYSIS.md");
    if let Ok(text) = std::fs::read_to_string(analysis) {
        let _ = writeln!(md, "{}\n", text.trim_end());
    }
    let _ = writeln!(md, "## How each client was driven\n\n{DRIVEN}");
    let _ = writeln!(md, "## Method\n\n{METHOD}");
    let _ = writeln!(md, "Every run's figures are in [results.csv](results.csv).");
    std::fs::write(options.out.join("RESULTS.md"), md)?;

    let mut csv = String::from("scenario,client,size_bytes,run,messages,wall_s,msgs_per_s,cpu_us_per_msg,peak_rss_mib,broker_cpu_pct,other_load_pct,jain_first_second,sleeps_per_1k_msgs,error\n");
    for s in samples {
        let ok = s.error.is_none();
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            s.scenario.name(),
            s.client,
            s.size,
            s.run + 1,
            s.messages,
            if ok {
                format!("{:.4}", s.wall.as_secs_f64())
            } else {
                String::new()
            },
            if ok {
                format!("{:.0}", s.rate())
            } else {
                String::new()
            },
            if ok {
                format!("{:.3}", s.cpu_per_message())
            } else {
                String::new()
            },
            if ok {
                format!("{:.1}", s.rss_mib())
            } else {
                String::new()
            },
            s.broker_share()
                .filter(|_| ok)
                .map_or(String::new(), |b| format!("{b:.0}")),
            s.other_share()
                .filter(|_| ok)
                .map_or(String::new(), |b| format!("{b:.0}")),
            s.jain.map_or(String::new(), |j| format!("{j:.4}")),
            s.sleeps_per_thousand()
                .filter(|_| ok)
                .map_or(String::new(), |n| format!("{n:.2}")),
            s.error
                .as_deref()
                .map_or(String::new(), |e| format!("\"{}\"", e.replace('"', "'"))),
        );
    }
    for ((s, size, client), group) in &groups {
        if let Some(m) = medians(group) {
            let _ = writeln!(
                csv,
                "{},{},{},median,{},,{:.0},{:.3},{:.1},{},{},{},{},",
                Scenario::ALL[*s].name(),
                CLIENTS[*client],
                size,
                group[0].messages,
                m.rate,
                m.cpu,
                m.rss,
                m.broker.map_or(String::new(), |b| format!("{b:.0}")),
                m.other.map_or(String::new(), |b| format!("{b:.0}")),
                m.jain.map_or(String::new(), |j| format!("{j:.4}")),
                m.sleeps.map_or(String::new(), |n| format!("{n:.2}")),
            );
        }
    }
    std::fs::write(options.out.join("results.csv"), csv)?;
    Ok(())
}

/// How much the peak RSS may exceed the RSS after the first 100k messages
/// for a client's memory to count as flat.
const FLAT_WITHIN: f64 = 0.10;

/// Writes MEMORY.md and memory.csv (the `--memory` run) into `options.out`.
pub fn write_memory(
    options: &Options,
    machine: &Machine,
    samples: &[Sample],
    elapsed: Duration,
) -> Res {
    std::fs::create_dir_all(&options.out)?;
    let mib = |kb: u64| kb as f64 / 1024.0;
    let mut md = String::new();
    let _ = writeln!(md, "# warren-compare memory run\n");
    let _ = writeln!(
        md,
        "Written by `cargo run --release -p warren-compare -- --memory{}` on {} ({:.0} s in all). \
         See [README.md](README.md) for what is measured and how.\n",
        if options.messages == 10_000_000 && options.sizes == [1024] && options.runs == 1 {
            ""
        } else {
            " ..."
        },
        machine.date,
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "- One consumer takes {} messages of {} from one queue (basic.qos prefetch {}, \
         manual ack with `multiple` every {}). The harness fills the queue with {} before \
         timing, then, on a connection of its own, publishes the rest while the worker \
         consumes, in batches of {} with confirms, whenever the queue holds at most {}, \
         so the broker never holds gigabytes. Once the first backlog is drained the \
         consumer runs at the pace the broker can take messages in and hand them out \
         (the publisher shares the broker), so msgs/s and CPU per message here are those \
         of a paced consumer, not the consume scenario's.",
        options.messages,
        options
            .sizes
            .iter()
            .map(|&s| size_label(s))
            .collect::<Vec<_>>()
            .join(", "),
        crate::PREFETCH,
        crate::ACK_EVERY,
        crate::MAX_BACKLOG,
        crate::CONFIRM_WINDOW,
        crate::MAX_BACKLOG,
    );
    let _ = writeln!(
        md,
        "- The worker reads its own RSS (`VmRSS`) once it has received {} messages, then \
         at every {} more; peak RSS is `VmHWM` at the end (the whole process life). \
         **Flat** means the peak is within {:.0}% of the RSS after the first {}.",
        crate::MEMORY_FIRST_MARK,
        crate::MEMORY_STEP,
        FLAT_WITHIN * 100.0,
        crate::MEMORY_FIRST_MARK,
    );
    let _ = writeln!(
        md,
        "- Machine: {} CPUs (nproc), {}; {}; RabbitMQ {} on the same machine.",
        machine.cpus, machine.cpu_model, machine.kernel, machine.rabbitmq
    );
    let _ = writeln!(md, "{}\n", machine.clients_line());
    let _ = writeln!(
        md,
        "| client | size | run | msgs/s | CPU µs/msg | RSS at 100k MiB | RSS at 1 M MiB | RSS at the last mark MiB | peak RSS MiB | peak over RSS at 100k | flat | anonymous at 100k MiB | anonymous, highest reading MiB |"
    );
    let _ = writeln!(
        md,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
    );
    let mut ordered: Vec<&Sample> = samples.iter().collect();
    ordered.sort_by_key(|s| {
        let client = CLIENTS.iter().position(|&c| c == s.client).unwrap_or(0);
        (s.size, client, s.run)
    });
    let at = |s: &Sample, mark: u64| s.rss_kb_at.iter().find(|r| r.0 >= mark).map(|r| r.1);
    for s in &ordered {
        if let Some(error) = &s.error {
            let _ = writeln!(
                md,
                "| {} | {} | {} | failed: {} | | | | | | | | | |",
                s.client,
                size_label(s.size),
                s.run + 1,
                error.replace('|', "/")
            );
            continue;
        }
        let baseline = at(s, crate::MEMORY_FIRST_MARK);
        let anon_first = s.rss_kb_at.first().map(|r| r.2);
        let anon_most = s.rss_kb_at.iter().map(|r| r.2).max();
        let growth = baseline.map(|b| s.peak_rss_kb as f64 / b as f64 - 1.0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.2} | {} | {} | {} | {:.1} | {} | {} | {} | {} |",
            s.client,
            size_label(s.size),
            s.run + 1,
            s.rate(),
            s.cpu_per_message(),
            baseline.map_or("-".into(), |kb| format!("{:.1}", mib(kb))),
            at(s, crate::MEMORY_STEP).map_or("-".into(), |kb| format!("{:.1}", mib(kb))),
            s.rss_kb_at
                .last()
                .map_or("-".into(), |r| format!("{:.1}", mib(r.1))),
            s.rss_mib(),
            growth.map_or("-".into(), |g| format!("{:+.1}%", g * 100.0)),
            match growth {
                Some(g) if g <= FLAT_WITHIN => "yes",
                Some(_) => "no",
                None => "-",
            },
            anon_first.map_or("-".into(), |kb| format!("{:.1}", mib(kb))),
            anon_most.map_or("-".into(), |kb| format!("{:.1}", mib(kb))),
        );
    }
    let _ = writeln!(md, "\n## RSS at each mark\n");
    let _ = writeln!(
        md,
        "RSS in MiB by messages received, its anonymous part (`RssAnon`: heap, stacks, \
         buffers; the rest is the program's and libraries' pages) in brackets. The worker \
         binary holds every client, so its file-backed part is larger than one client's \
         own program would be.\n"
    );
    for s in ordered.iter().filter(|s| s.error.is_none()) {
        let readings: Vec<String> = s
            .rss_kb_at
            .iter()
            .map(|(received, rss, anon)| {
                format!("{}k: {:.1} ({:.1})", received / 1000, mib(*rss), mib(*anon))
            })
            .collect();
        let _ = writeln!(
            md,
            "- {} ({}, run {}): {}",
            s.client,
            size_label(s.size),
            s.run + 1,
            readings.join(", ")
        );
    }
    let _ = writeln!(md, "\nEvery reading is in [memory.csv](memory.csv).");
    std::fs::write(options.out.join("MEMORY.md"), md)?;

    let mut csv = String::from(
        "client,size_bytes,run,messages,wall_s,msgs_per_s,cpu_us_per_msg,peak_rss_kib,received_at_reading,rss_kib_at_reading,anon_kib_at_reading,error\n",
    );
    for s in &ordered {
        let head = format!("{},{},{},{}", s.client, s.size, s.run + 1, s.messages);
        if let Some(error) = &s.error {
            let _ = writeln!(csv, "{head},,,,,,,,\"{}\"", error.replace('"', "'"));
            continue;
        }
        let totals = format!(
            "{:.3},{:.0},{:.3},{}",
            s.wall.as_secs_f64(),
            s.rate(),
            s.cpu_per_message(),
            s.peak_rss_kb
        );
        for (received, rss, anon) in &s.rss_kb_at {
            let _ = writeln!(csv, "{head},{totals},{received},{rss},{anon},");
        }
    }
    std::fs::write(options.out.join("memory.csv"), csv)?;
    Ok(())
}

fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}
