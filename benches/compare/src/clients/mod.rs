//! One module per client library. Each runs a [`Job`] the way that
//! library's users get the most out of it, calling [`Signal::go`] when setup
//! is done and `finish` when the work is done (before closing the
//! connection, which is not timed).

mod amiquip_client;
mod amqprs_client;
mod lapin_client;
pub mod rabbitmq_c;
mod warren_async;
mod warren_blocking;

use crate::worker::{Job, Signal};
use crate::Res;

/// Runs `job` through `client`.
pub fn run(client: &str, job: &Job, signal: &mut Signal) -> Res {
    match client {
        "warren" => warren_blocking::run(job, signal),
        "warren-async" => current_thread()?.block_on(warren_async::run(job, signal)),
        "lapin" => current_thread()?.block_on(lapin_client::run(job, signal)),
        "amqprs" => current_thread()?.block_on(amqprs_client::run(job, signal)),
        "amiquip" => amiquip_client::run(job, signal),
        "rabbitmq-c" => rabbitmq_c::run(job, signal),
        other => Err(format!("unknown client {other:?}").into()),
    }
}

/// The runtime of every async client: tokio, current thread. Whatever
/// threads a client starts itself (warren's and lapin's I/O threads) run
/// besides it, and count in its CPU time too.
fn current_thread() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
