//! amiquip (blocking, with its own I/O thread). Publishes call
//! `basic_publish` in a loop; confirms arrive on the crossbeam receiver of
//! `listen_for_publisher_confirms`, drained after every publish, and the
//! publisher blocks on it whenever 1000 are outstanding. Consumers read
//! the consumer's receiver and `ack_multiple`; many-queues runs one thread
//! per queue (each owns its channel: amiquip channels are not `Sync`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};

use amiquip::{Channel, Confirm, ConsumerMessage, ConsumerOptions, Delivery, Publish};

use crate::worker::{ack_now, Confirms, Job, Signal};
use crate::{Res, Scenario, CONFIRM_WINDOW, PREFETCH};

pub fn run(job: &Job, signal: &mut Signal) -> Res {
    let mut connection = amiquip::Connection::insecure_open(&job.uri)?;
    match job.scenario {
        Scenario::Publish | Scenario::PublishConfirm => {
            let channel = connection.open_channel(None)?;
            publish(&channel, job, signal)?;
        }
        Scenario::Consume | Scenario::ManyQueues | Scenario::LongConsume => {
            let mut channels = Vec::with_capacity(job.queues.len());
            for _ in &job.queues {
                let channel = connection.open_channel(None)?;
                channel.qos(0, PREFETCH, false)?;
                channels.push(channel);
            }
            return consume(connection, channels, job, signal);
        }
    }
    connection.close()?;
    Ok(())
}

fn publish(channel: &Channel, job: &Job, signal: &mut Signal) -> Res {
    let confirm = job.scenario == Scenario::PublishConfirm;
    let confirms = if confirm {
        let receiver = channel.listen_for_publisher_confirms()?;
        channel.enable_publisher_confirms()?;
        Some(receiver)
    } else {
        None
    };
    let body = job.body();
    let queue = job.queues[0].as_str();
    let mut confirmed = Confirms::default();
    signal.go();
    for tag in 1..=job.messages {
        channel.basic_publish("", Publish::new(&body, queue))?;
        if let Some(receiver) = &confirms {
            while let Ok(confirm) = receiver.try_recv() {
                take(&mut confirmed, confirm);
            }
            while tag - confirmed.upto() >= CONFIRM_WINDOW as u64 {
                take(&mut confirmed, receiver.recv()?);
            }
        }
    }
    if let Some(receiver) = &confirms {
        while confirmed.upto() < job.messages {
            take(&mut confirmed, receiver.recv()?);
        }
    }
    if confirmed.nacked {
        return Err("a message was nacked".into());
    }
    signal.finish();
    Ok(())
}

fn take(confirmed: &mut Confirms, confirm: Confirm) {
    match confirm {
        Confirm::Ack(p) => confirmed.confirm(p.delivery_tag, p.multiple, true),
        Confirm::Nack(p) => confirmed.confirm(p.delivery_tag, p.multiple, false),
    }
}

fn consume(
    connection: amiquip::Connection,
    channels: Vec<Channel>,
    job: &Job,
    signal: &mut Signal,
) -> Res {
    let counts = signal.counts();
    signal.go();
    let per_queue = job.per_queue();
    if channels.len() == 1 {
        let consumer = drain(&channels[0], &job.queues[0], per_queue, &counts[0])?;
        signal.finish();
        let closed = connection.close();
        drop(consumer);
        drop(channels);
        return Ok(closed?);
    }
    // One thread per queue, each owning its channel. No channel handle is
    // dropped before the connection is closed: amiquip's I/O thread fails
    // ("tried to communicate with a nonexistent client") when it finds a
    // channel whose handle was dropped while it still had work for it, and
    // that happens when threads drop their channels while others consume.
    let (results, done) = mpsc::channel();
    let release = Arc::new(Barrier::new(channels.len() + 1));
    for ((channel, queue), index) in channels.into_iter().zip(job.queues.clone()).zip(0..) {
        let (results, release, counts) = (results.clone(), release.clone(), counts.clone());
        std::thread::spawn(move || {
            let consumer = drain(&channel, &queue, per_queue, &counts[index]);
            let failed = consumer.as_ref().err().map(|e| e.to_string());
            let _ = results.send(failed);
            release.wait();
            drop(consumer);
            drop(channel);
        });
    }
    for _ in 0..counts.len() {
        if let Some(error) = done.recv()? {
            // A consumer's receiver disconnects when the I/O thread fails:
            // its error is what closing says.
            return Err(match connection.close() {
                Err(close) => format!("{error} (connection: {close})").into(),
                Ok(()) => error.into(),
            });
        }
    }
    signal.finish();
    let closed = connection.close();
    release.wait();
    Ok(closed?)
}

/// Consumes `queue` until `total` deliveries came, acking with `multiple`
/// every 100; returns the consumer, still registered.
fn drain<'a>(
    channel: &'a Channel,
    queue: &str,
    total: u64,
    count: &AtomicU64,
) -> Res<amiquip::Consumer<'a>> {
    let consumer = channel.basic_consume(queue, ConsumerOptions::default())?;
    let mut received = 0;
    while received < total {
        match consumer.receiver().recv()? {
            ConsumerMessage::Delivery(delivery) => {
                received += 1;
                count.fetch_add(1, Ordering::Relaxed);
                if ack_now(received, total) {
                    ack(&consumer, delivery)?;
                }
            }
            other => return Err(format!("the consumer ended early: {other:?}").into()),
        }
    }
    Ok(consumer)
}

fn ack(consumer: &amiquip::Consumer, delivery: Delivery) -> Res {
    consumer.ack_multiple(delivery)?;
    Ok(())
}
