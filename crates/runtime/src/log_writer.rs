//! The log writer: lines are appended to a bounded buffer that a background thread writes out
//! in batches, so a request never waits on the log pipe and the log costs no wake-up or
//! syscall per line.
//!
//! Written here rather than taken from `tracing-appender`: its non-blocking writer hands every
//! line to its thread through a channel, which at 2,000 lines/s cost a futex wake, a context
//! switch and a `write(2)` per request (BENCHMARKS.md, "CPU per review"). Batching needs only a
//! mutex-guarded buffer and a condition variable.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes of lines waiting to be written; a line that does not fit is dropped and counted. About
/// a thousand decision lines; resident only while used.
pub const CAPACITY: usize = 1024 * 1024;

/// How long the writer thread gathers lines after the first one of a batch arrives.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// A batch is written at once, without waiting for the interval, past this many bytes.
const EARLY_FLUSH: usize = CAPACITY / 2;

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a batch starts, when it passes [`EARLY_FLUSH`] and at close.
    ready: Condvar,
    dropped: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    lines: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Appending bytes cannot leave the buffer half-updated: a panic elsewhere is no reason
        // to stop logging.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writing end, cloned into every event: each `write` is one whole line (the `tracing`
/// formatter writes an event with one `write_all`).
#[derive(Clone, Debug)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Counts the lines dropped because the buffer was full (`trustgate_log_lines_dropped_total`).
#[derive(Clone, Debug)]
pub struct DroppedLines {
    shared: Arc<Shared>,
}

impl DroppedLines {
    /// Lines dropped so far.
    pub fn dropped_lines(&self) -> usize {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// Writes out the lines still buffered and stops the writer thread when dropped.
#[derive(Debug)]
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the writer thread that writes batches of lines to `out`.
pub fn spawn<W: Write + Send + 'static>(out: W) -> std::io::Result<(LogWriter, DroppedLines, FlushGuard)> {
    let shared =
        Arc::new(Shared { state: Mutex::new(State::default()), ready: Condvar::new(), dropped: AtomicUsize::new(0) });
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new().name("trustgate-log".to_owned()).spawn(move || write_batches(&shared, out))?
    };
    Ok((
        LogWriter { shared: shared.clone() },
        DroppedLines { shared: shared.clone() },
        FlushGuard { shared, thread: Some(thread) },
    ))
}

fn write_batches(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.lines.is_empty() && !state.closed {
            state = shared.ready.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        if state.lines.is_empty() && state.closed {
            return;
        }
        // Let the lines of the next few milliseconds join this batch.
        state = shared
            .ready
            .wait_timeout_while(state, FLUSH_INTERVAL, |s| !s.closed && s.lines.len() < EARLY_FLUSH)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        std::mem::swap(&mut state.lines, &mut batch);
        drop(state);
        // Outside the lock: writers only ever wait for a copy into the buffer, never for stderr.
        // A failed write loses the batch; there is nowhere else to report it.
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
    }
}

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.lock();
        let before = state.lines.len();
        if before + line.len() > CAPACITY {
            drop(state);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        state.lines.extend_from_slice(line);
        let after = state.lines.len();
        drop(state);
        // One wake-up per batch, not per line: the thread is waiting only for the first line,
        // or gathering until the buffer passes the early-flush mark.
        if before == 0 || (before < EARLY_FLUSH && after >= EARLY_FLUSH) {
            self.shared.ready.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that blocks until told to go on, as a stalled stderr pipe does, and keeps what it
    /// was given.
    #[derive(Clone)]
    struct Sink {
        gate: Arc<Mutex<()>>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            drop(self.gate.lock().unwrap());
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn sink() -> Sink {
        Sink { gate: Arc::default(), written: Arc::default() }
    }

    #[test]
    fn lines_are_written_in_order_and_flushed_when_the_guard_drops() {
        let out = sink();
        let (mut writer, dropped, guard) = spawn(out.clone()).unwrap();
        for i in 0..1000 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(out.written.lock().unwrap().clone()).unwrap(), expected);
        assert_eq!(dropped.dropped_lines(), 0);
    }

    #[test]
    fn a_stalled_output_drops_lines_past_the_capacity_and_counts_them() {
        let out = sink();
        let held = out.gate.lock().unwrap();
        let (mut writer, dropped, guard) = spawn(out.clone()).unwrap();
        let line = [b'x'; 1023].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        // Three buffers' worth: at most the one being written and the one waiting get through.
        let lines = 3 * CAPACITY / line.len();
        for _ in 0..lines {
            writer.write_all(&line).unwrap();
        }
        let kept = lines - dropped.dropped_lines();
        assert!(dropped.dropped_lines() >= CAPACITY / line.len(), "{} dropped", dropped.dropped_lines());
        drop(held);
        drop(guard);
        assert_eq!(out.written.lock().unwrap().len(), kept * line.len());
    }
}
