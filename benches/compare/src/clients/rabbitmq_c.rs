//! rabbitmq-c (librabbitmq, the C client, from Debian's `librabbitmq-dev`),
//! called through the few declarations below. It is single-threaded and
//! blocking: every call runs on the caller's thread, with no I/O thread.
//!
//! Publishes call `amqp_basic_publish` in a loop (one `send` per message).
//! With confirms, the publisher reads whatever acks are already in
//! rabbitmq-c's receive buffer after each publish (`amqp_data_in_buffer`,
//! no system call), and blocks in `amqp_simple_wait_frame` whenever 1000
//! are outstanding. Consumers loop on `amqp_consume_message`, acking with
//! `multiple` every 100 on the delivery's channel, and release the
//! envelope's memory after each (`amqp_destroy_envelope`,
//! `amqp_maybe_release_buffers`), as rabbitmq-c's own examples do.
//! many-queues opens one channel per queue on the one connection, sends
//! every basic.consume with `nowait`, and drains them all from one loop
//! (`amqp_consume_message` returns the next delivery of any channel).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;
use std::sync::atomic::Ordering;

use crate::worker::{ack_now, Confirms, Job, Signal, UriParts};
use crate::{Res, Scenario, CONFIRM_WINDOW, PREFETCH};

/// `amqp_bytes_t`: a length and a pointer, borrowed.
#[repr(C)]
#[derive(Clone, Copy)]
struct AmqpBytes {
    len: usize,
    bytes: *const c_void,
}

impl AmqpBytes {
    fn of(data: &[u8]) -> AmqpBytes {
        AmqpBytes {
            len: data.len(),
            bytes: data.as_ptr().cast(),
        }
    }

    const EMPTY: AmqpBytes = AmqpBytes {
        len: 0,
        bytes: ptr::null(),
    };
}

/// `amqp_table_t`; only the empty table is passed.
#[repr(C)]
#[derive(Clone, Copy)]
struct AmqpTable {
    num_entries: c_int,
    entries: *mut c_void,
}

/// `amqp_method_t`.
#[repr(C)]
struct AmqpMethod {
    id: u32,
    decoded: *mut c_void,
}

/// `amqp_rpc_reply_t`.
#[repr(C)]
struct RpcReply {
    reply_type: c_int,
    reply: AmqpMethod,
    library_error: c_int,
}

/// `amqp_envelope_t`: the fields read here by name, the message (its
/// properties, body and memory pool) as opaque words of the right size.
#[repr(C)]
struct Envelope {
    channel: u16,
    consumer_tag: AmqpBytes,
    delivery_tag: u64,
    redelivered: c_int,
    exchange: AmqpBytes,
    routing_key: AmqpBytes,
    properties: [u64; 25],
    body: AmqpBytes,
    pool: [u64; 8],
}

/// `amqp_frame_t`, for method frames: the method id and its decoded fields.
#[repr(C)]
struct Frame {
    frame_type: u8,
    channel: u16,
    padding: u32,
    method_id: u32,
    method_padding: u32,
    decoded: *mut c_void,
    rest: [u64; 3],
}

/// `amqp_basic_consume_t`: the arguments of basic.consume, for
/// `amqp_send_method`.
#[repr(C)]
struct BasicConsume {
    ticket: u16,
    queue: AmqpBytes,
    consumer_tag: AmqpBytes,
    no_local: c_int,
    no_ack: c_int,
    exclusive: c_int,
    nowait: c_int,
    arguments: AmqpTable,
}

/// `amqp_basic_ack_t` (`amqp_basic_nack_t` begins the same way).
#[repr(C)]
struct BasicAck {
    delivery_tag: u64,
    multiple: c_int,
}

// The sizes of rabbitmq-c 0.11's structs on x86_64 (checked with a C
// program against its headers).
const _: () = assert!(std::mem::size_of::<Envelope>() == 352);
const _: () = assert!(std::mem::size_of::<Frame>() == 48);
const _: () = assert!(std::mem::size_of::<RpcReply>() == 32);
const _: () = assert!(std::mem::size_of::<BasicConsume>() == 72);
const _: () = assert!(std::mem::offset_of!(BasicConsume, nowait) == 52);
const _: () = assert!(std::mem::offset_of!(Envelope, body) == 272);
const _: () = assert!(std::mem::offset_of!(Frame, method_id) == 8);
const _: () = assert!(std::mem::offset_of!(Frame, decoded) == 16);

const RESPONSE_NORMAL: c_int = 1;
const RESPONSE_LIBRARY_EXCEPTION: c_int = 2;
const FRAME_METHOD: u8 = 1;
const BASIC_ACK_METHOD: u32 = 0x003C_0050;
const BASIC_NACK_METHOD: u32 = 0x003C_0078;
const BASIC_CONSUME_METHOD: u32 = 0x003C_0014;
const SASL_METHOD_PLAIN: c_int = 0;
const REPLY_SUCCESS: c_int = 200;

type State = *mut c_void;

#[link(name = "rabbitmq")]
extern "C" {
    fn amqp_version() -> *const c_char;
    fn amqp_error_string2(err: c_int) -> *const c_char;
    fn amqp_new_connection() -> State;
    fn amqp_destroy_connection(state: State) -> c_int;
    fn amqp_tcp_socket_new(state: State) -> *mut c_void;
    fn amqp_socket_open(socket: *mut c_void, host: *const c_char, port: c_int) -> c_int;
    fn amqp_login(
        state: State,
        vhost: *const c_char,
        channel_max: c_int,
        frame_max: c_int,
        heartbeat: c_int,
        sasl_method: c_int,
        ...
    ) -> RpcReply;
    fn amqp_get_rpc_reply(state: State) -> RpcReply;
    fn amqp_channel_open(state: State, channel: u16) -> *mut c_void;
    fn amqp_basic_qos(
        state: State,
        channel: u16,
        prefetch_size: u32,
        prefetch_count: u16,
        global: c_int,
    ) -> *mut c_void;
    fn amqp_confirm_select(state: State, channel: u16) -> *mut c_void;
    #[allow(clippy::too_many_arguments)]
    fn amqp_basic_publish(
        state: State,
        channel: u16,
        exchange: AmqpBytes,
        routing_key: AmqpBytes,
        mandatory: c_int,
        immediate: c_int,
        properties: *const c_void,
        body: AmqpBytes,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn amqp_basic_consume(
        state: State,
        channel: u16,
        queue: AmqpBytes,
        consumer_tag: AmqpBytes,
        no_local: c_int,
        no_ack: c_int,
        exclusive: c_int,
        arguments: AmqpTable,
    ) -> *mut c_void;
    fn amqp_send_method(state: State, channel: u16, id: u32, decoded: *mut c_void) -> c_int;
    fn amqp_basic_ack(state: State, channel: u16, delivery_tag: u64, multiple: c_int) -> c_int;
    fn amqp_consume_message(
        state: State,
        envelope: *mut Envelope,
        timeout: *const c_void,
        flags: c_int,
    ) -> RpcReply;
    fn amqp_destroy_envelope(envelope: *mut Envelope);
    fn amqp_maybe_release_buffers(state: State);
    fn amqp_data_in_buffer(state: State) -> c_int;
    fn amqp_simple_wait_frame(state: State, frame: *mut Frame) -> c_int;
    fn amqp_connection_close(state: State, code: c_int) -> RpcReply;
}

/// rabbitmq-c's version, as the library reports it.
pub fn version() -> String {
    // SAFETY: amqp_version returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(amqp_version()) }
        .to_string_lossy()
        .into_owned()
}

fn status_error(what: &str, status: c_int) -> crate::BoxError {
    // SAFETY: amqp_error_string2 returns a static string for any code.
    let text = unsafe { CStr::from_ptr(amqp_error_string2(status)) }.to_string_lossy();
    format!("{what}: {text}").into()
}

/// One connection, closed and freed when dropped.
struct Connection {
    state: State,
}

impl Connection {
    fn open(uri: &str) -> Res<Connection> {
        let parts = UriParts::parse(uri)?;
        // SAFETY: a fresh connection state, owned by the value returned.
        let connection = Connection {
            state: unsafe { amqp_new_connection() },
        };
        if connection.state.is_null() {
            return Err("amqp_new_connection failed".into());
        }
        let host = CString::new(parts.host)?;
        let (vhost, user) = (CString::new(parts.vhost)?, CString::new(parts.user)?);
        let password = CString::new(parts.password)?;
        // SAFETY: the socket belongs to the state; every string outlives the call.
        unsafe {
            let socket = amqp_tcp_socket_new(connection.state);
            if socket.is_null() {
                return Err("amqp_tcp_socket_new failed".into());
            }
            let status = amqp_socket_open(socket, host.as_ptr(), c_int::from(parts.port));
            if status != 0 {
                return Err(status_error("cannot connect", status));
            }
            let reply = amqp_login(
                connection.state,
                vhost.as_ptr(),
                0,
                131_072,
                0,
                SASL_METHOD_PLAIN,
                user.as_ptr(),
                password.as_ptr(),
            );
            check(reply, "login")?;
        }
        Ok(connection)
    }

    /// Checks the reply of the synchronous call just made (they return
    /// NULL on failure and leave the reason here).
    fn rpc_ok(&self, result: *mut c_void, what: &str) -> Res {
        if result.is_null() {
            // SAFETY: the state is live.
            check(unsafe { amqp_get_rpc_reply(self.state) }, what)?;
            return Err(format!("{what} failed").into());
        }
        Ok(())
    }

    fn open_channel(&self, channel: u16) -> Res {
        // SAFETY: the state is live.
        self.rpc_ok(
            unsafe { amqp_channel_open(self.state, channel) },
            "channel.open",
        )
    }

    /// Reads one frame, which must be a publisher confirm, into `confirms`.
    fn take_confirm(&self, confirms: &mut Confirms) -> Res {
        // SAFETY: `frame` is written by the library; for a basic.ack or
        // basic.nack method frame `decoded` points at its fields, which
        // live until the buffers are released below.
        unsafe {
            let mut frame: Frame = std::mem::zeroed();
            let status = amqp_simple_wait_frame(self.state, &mut frame);
            if status != 0 {
                return Err(status_error("waiting for a confirm", status));
            }
            if frame.frame_type != FRAME_METHOD {
                return Err(format!("unexpected frame type {}", frame.frame_type).into());
            }
            let ack = match frame.method_id {
                BASIC_ACK_METHOD => true,
                BASIC_NACK_METHOD => false,
                other => return Err(format!("unexpected method {other:#010x}").into()),
            };
            let fields = &*(frame.decoded as *const BasicAck);
            confirms.confirm(fields.delivery_tag, fields.multiple != 0, ack);
            amqp_maybe_release_buffers(self.state);
        }
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: the state is live until destroyed here, once.
        unsafe {
            amqp_connection_close(self.state, REPLY_SUCCESS);
            amqp_destroy_connection(self.state);
        }
    }
}

fn check(reply: RpcReply, what: &str) -> Res {
    match reply.reply_type {
        RESPONSE_NORMAL => Ok(()),
        RESPONSE_LIBRARY_EXCEPTION => Err(status_error(what, reply.library_error)),
        _ => Err(format!(
            "{what}: the broker closed with method {:#010x}",
            reply.reply.id
        )
        .into()),
    }
}

pub fn run(job: &Job, signal: &mut Signal) -> Res {
    let connection = Connection::open(&job.uri)?;
    match job.scenario {
        Scenario::Publish | Scenario::PublishConfirm => publish(&connection, job, signal),
        Scenario::Consume | Scenario::ManyQueues | Scenario::LongConsume => {
            consume(&connection, job, signal)
        }
    }
}

fn publish(connection: &Connection, job: &Job, signal: &mut Signal) -> Res {
    let channel = 1;
    connection.open_channel(channel)?;
    let confirm = job.scenario == Scenario::PublishConfirm;
    if confirm {
        // SAFETY: the state is live.
        let ok = unsafe { amqp_confirm_select(connection.state, channel) };
        connection.rpc_ok(ok, "confirm.select")?;
    }
    let body = job.body();
    let queue = job.queues[0].as_bytes();
    let mut confirms = Confirms::default();
    signal.go();
    for tag in 1..=job.messages {
        // SAFETY: the byte slices outlive the call; NULL properties are
        // rabbitmq-c's defaults.
        let status = unsafe {
            amqp_basic_publish(
                connection.state,
                channel,
                AmqpBytes::EMPTY,
                AmqpBytes::of(queue),
                0,
                0,
                ptr::null(),
                AmqpBytes::of(&body),
            )
        };
        if status != 0 {
            return Err(status_error("basic.publish", status));
        }
        if confirm {
            // SAFETY: the state is live.
            while unsafe { amqp_data_in_buffer(connection.state) } != 0 {
                connection.take_confirm(&mut confirms)?;
            }
            while tag - confirms.upto() >= CONFIRM_WINDOW as u64 {
                connection.take_confirm(&mut confirms)?;
            }
        }
    }
    if confirm {
        while confirms.upto() < job.messages {
            connection.take_confirm(&mut confirms)?;
        }
        if confirms.nacked {
            return Err("a message was nacked".into());
        }
    }
    signal.finish();
    Ok(())
}

fn consume(connection: &Connection, job: &Job, signal: &mut Signal) -> Res {
    // Channel i + 1 consumes queue i.
    for index in 0..job.queues.len() {
        let channel = index as u16 + 1;
        connection.open_channel(channel)?;
        // SAFETY: the state is live.
        let ok = unsafe { amqp_basic_qos(connection.state, channel, 0, PREFETCH, 0) };
        connection.rpc_ok(ok, "basic.qos")?;
    }
    let counts = signal.counts();
    signal.go();
    let empty = AmqpTable {
        num_entries: 0,
        entries: ptr::null_mut(),
    };
    if job.queues.len() == 1 {
        // SAFETY: the queue name outlives the call.
        let ok = unsafe {
            amqp_basic_consume(
                connection.state,
                1,
                AmqpBytes::of(job.queues[0].as_bytes()),
                AmqpBytes::EMPTY,
                0,
                0,
                0,
                empty,
            )
        };
        connection.rpc_ok(ok, "basic.consume")?;
    } else {
        // With many queues, `amqp_basic_consume` (which waits for each
        // consume-ok, queueing every delivery of the channels already
        // consuming meanwhile) slows to about a hundred messages a second:
        // its users send the consumes with `nowait` instead.
        for (index, queue) in job.queues.iter().enumerate() {
            let mut consume = BasicConsume {
                ticket: 0,
                queue: AmqpBytes::of(queue.as_bytes()),
                consumer_tag: AmqpBytes::EMPTY,
                no_local: 0,
                no_ack: 0,
                exclusive: 0,
                nowait: 1,
                arguments: empty,
            };
            // SAFETY: the arguments outlive the call, which encodes them.
            let status = unsafe {
                amqp_send_method(
                    connection.state,
                    index as u16 + 1,
                    BASIC_CONSUME_METHOD,
                    (&mut consume as *mut BasicConsume).cast(),
                )
            };
            if status != 0 {
                return Err(status_error("basic.consume", status));
            }
        }
    }
    let per_queue = job.per_queue();
    let mut received = vec![0u64; job.queues.len()];
    for _ in 0..per_queue * job.queues.len() as u64 {
        // SAFETY: the envelope is filled by the library and destroyed
        // before the next one; NULL timeout blocks.
        unsafe {
            let mut envelope: Envelope = std::mem::zeroed();
            amqp_maybe_release_buffers(connection.state);
            let reply = amqp_consume_message(connection.state, &mut envelope, ptr::null(), 0);
            check(reply, "consuming")?;
            let index = usize::from(envelope.channel)
                .checked_sub(1)
                .filter(|&i| i < received.len())
                .ok_or("a delivery on an unknown channel")?;
            counts[index].fetch_add(1, Ordering::Relaxed);
            received[index] += 1;
            let acked = if ack_now(received[index], per_queue) {
                amqp_basic_ack(connection.state, envelope.channel, envelope.delivery_tag, 1)
            } else {
                0
            };
            amqp_destroy_envelope(&mut envelope);
            if acked != 0 {
                return Err(status_error("basic.ack", acked));
            }
        }
    }
    signal.finish();
    Ok(())
}
