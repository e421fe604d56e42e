//! Paced sends (`rate > 0`) for every backend connection, from one thread
//! that writes the WebSocket frames to the sockets itself.
//!
//! Why not a tokio task per connection: at 1,000 connections × 20 msg/s,
//! each message cost the backend two cross-thread wake-ups (a timer thread
//! woken through a channel, then a tokio worker woken through a `Notify`,
//! which woke the other worker in turn), about 47 µs of CPU per message,
//! 0.94 of the 2 CPUs. The harness then ate the machine, and the reference
//! relay's own p99 came out at 4–150 ms at 20,000 msg/s (docs/BENCHMARKS.md).
//! Here a message costs a `send` on a socket and a share of one timer
//! wake-up of this thread; the phases are still random at µs precision, so
//! messages still reach tether one at a time.
//!
//! Server frames are unmasked: a text frame is a 2- or 4-byte header and
//! the text. The thread writes through a duplicate of the socket's file
//! descriptor while the connection's task keeps reading it (closes); it
//! hands the connection back when done, and the task sends `end,<n>`.

use std::collections::{BinaryHeap, HashMap};
use std::io::Write as _;
use std::net::TcpStream as StdTcp;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::backend::{payload, Spec};
use crate::sys::{now_ns, Rng};

/// One paced connection, as the thread sees it.
struct Job {
    sock: StdTcp,
    spec: Spec,
    start: u64,
    deadline: u64,
    sent: u64,
    last: u64,
    /// Bytes the socket did not take yet (it is non-blocking).
    pending: Vec<u8>,
    /// When a finished job stops waiting for the socket to take `pending`.
    give_up: u64,
    closed: Arc<AtomicBool>,
    done: oneshot::Sender<Option<u64>>,
}

/// The pacing thread's handle.
pub struct Pacer {
    tx: mpsc::Sender<Job>,
}

impl Pacer {
    /// Starts the thread; `pad` is the padding messages take slices of.
    pub fn start(pad: Arc<str>) -> Pacer {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("pacer".into()).spawn(move || run(rx, &pad)).expect("spawn the pacer thread");
        Pacer { tx }
    }

    /// Sends `spec.rate` messages/s on socket `fd` (from a random phase if asked)
    /// until `spec.ms` or `spec.count` or `closed`; returns how many were
    /// sent, or `None` if the socket failed.
    pub async fn pace(&self, fd: RawFd, spec: Spec, random_phase: bool, closed: Arc<AtomicBool>) -> Option<u64> {
        // SAFETY: `dup` of a descriptor the caller keeps open meanwhile; the
        // copy is owned by the `StdTcp` alone, which closes it.
        let fd = unsafe { libc::dup(fd) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a fresh descriptor of a connected TCP socket.
        let sock = unsafe { StdTcp::from_raw_fd(fd) };
        let period = 1e9 / spec.rate;
        let phase = if random_phase { Rng::new().unit() * period.max((spec.tick_us * 1000) as f64) } else { 0.0 };
        let now = now_ns();
        let deadline = if spec.ms > 0 { now + spec.ms * 1_000_000 } else { u64::MAX };
        let (done, rx) = oneshot::channel();
        let job = Job {
            sock,
            spec,
            start: now + phase as u64,
            deadline,
            sent: 0,
            last: 0,
            pending: Vec::new(),
            give_up: 0,
            closed,
            done,
        };
        self.tx.send(job).ok()?;
        rx.await.ok().flatten()
    }
}

/// When a job is due next.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due(std::cmp::Reverse<(u64, u64)>);

fn run(rx: mpsc::Receiver<Job>, pad: &str) {
    // 1 µs of timer slack instead of 50 µs, for this thread only.
    // SAFETY: prctl with an integer argument has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
    let mut jobs: HashMap<u64, Job> = HashMap::new();
    let mut heap: BinaryHeap<Due> = BinaryHeap::new();
    let mut next_id = 0u64;
    let mut frame = Vec::new();
    loop {
        let now = now_ns();
        // What is due within 5 µs goes out now.
        while let Some(Due(std::cmp::Reverse((at, id)))) = heap.peek() {
            if *at > now + 5_000 {
                break;
            }
            let id = *id;
            heap.pop();
            let Some(mut job) = jobs.remove(&id) else { continue };
            match step(&mut job, pad, &mut frame) {
                Some(at) => {
                    heap.push(Due(std::cmp::Reverse((at, id))));
                    jobs.insert(id, job);
                }
                None => finish(job),
            }
        }
        let wait = heap.peek().map(|Due(std::cmp::Reverse((at, _)))| at.saturating_sub(now_ns()));
        let got = match wait {
            None => rx.recv().map_err(|_| true),
            Some(ns) => {
                rx.recv_timeout(Duration::from_nanos(ns)).map_err(|e| e == mpsc::RecvTimeoutError::Disconnected)
            }
        };
        match got {
            Ok(job) => {
                heap.push(Due(std::cmp::Reverse((job.start, next_id))));
                jobs.insert(next_id, job);
                next_id += 1;
            }
            Err(true) => return,
            Err(false) => {}
        }
    }
}

/// Sends what is due on `job`; returns when it is due next, or `None`
/// when it is finished (or failed).
fn step(job: &mut Job, pad: &str, frame: &mut Vec<u8>) -> Option<u64> {
    let spec = job.spec;
    let now = now_ns();
    let finished =
        (spec.count > 0 && job.sent >= spec.count) || now >= job.deadline || job.closed.load(Ordering::Relaxed);
    if finished {
        return drain(job, now);
    }
    let period = 1e9 / spec.rate;
    let due = (now.saturating_sub(job.start) as f64 / period) as u64 + 1;
    let due = if spec.count > 0 { due.min(spec.count) } else { due };
    frame.clear();
    frame.extend_from_slice(&job.pending);
    job.pending.clear();
    while job.sent < due {
        let text = payload(job.sent, spec.size, pad);
        frame.push(0x81);
        match text.len() {
            n @ 0..=125 => frame.push(n as u8),
            n @ 126..=0xffff => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(text.as_bytes());
        job.sent += 1;
    }
    job.last = now;
    if write_some(job, frame).is_err() {
        job.closed.store(true, Ordering::Relaxed);
        job.sent = u64::MAX;
        return None;
    }
    let tick = spec.tick_us * 1000;
    Some((job.start + (job.sent as f64 * period) as u64).max(job.last + tick))
}

/// Writes what the non-blocking socket takes; keeps the rest for later.
fn write_some(job: &mut Job, bytes: &[u8]) -> std::io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        match job.sock.write(&bytes[at..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    job.pending.extend_from_slice(&bytes[at..]);
    Ok(())
}

/// A finished job writes out what the socket did not take yet, retrying
/// every 100 µs from the heap (not blocking the thread, which paces every
/// other connection), for 1 s at most.
fn drain(job: &mut Job, now: u64) -> Option<u64> {
    if job.pending.is_empty() || job.closed.load(Ordering::Relaxed) {
        return None;
    }
    if job.give_up == 0 {
        job.give_up = now + 1_000_000_000;
    }
    let rest = std::mem::take(&mut job.pending);
    if write_some(job, &rest).is_err() || (!job.pending.is_empty() && now > job.give_up) {
        job.sent = u64::MAX;
        return None;
    }
    (!job.pending.is_empty()).then_some(now + 100_000)
}

/// Hands the count back (`None` if the socket failed or kept bytes).
fn finish(job: Job) {
    let sent = (job.sent != u64::MAX && job.pending.is_empty()).then_some(job.sent);
    let _ = job.done.send(sent);
}
