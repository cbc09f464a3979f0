//! WASI's CLI world for guests (`wasi:cli`, `wasi:io`, …, linked by
//! `wasmtime-wasi`): a component's `environment` from the manifest, and its
//! stdio, where every line a guest prints goes to
//! `<state-dir>/logs/<component>_{stdout,stderr}.txt` (Spin's layout), and,
//! with `--follow`, to the terminal prefixed by the component id.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, mpsc};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use wasmtime_wasi::cli::AsyncStdoutStream;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

/// Bytes a guest may have in flight to one stream before it waits.
const STREAM_BUDGET: usize = 64 * 1024;

/// Bytes of a component's output queued for its writer thread, all its
/// instances together: a guest that prints faster than the disk takes it
/// then waits (asynchronously) instead of growing the host's memory.
const QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// One component's two log files, shared by all its instances. Guests'
/// writes are queued to a thread of the component's own, which appends them
/// in batches (lines reach the file within a few milliseconds), so a guest's
/// `println!` never waits for the disk on an async worker.
#[derive(Clone)]
pub struct ComponentLogs {
    stdout: Writer,
    stderr: Writer,
}

/// Which of a component's files a write goes to.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

struct Sink {
    file: BufWriter<File>,
    /// `Some(prefix)` when the stream is echoed to the terminal.
    echo: Option<String>,
}

impl ComponentLogs {
    pub fn open(logs_dir: &Path, component: &str, echo: bool) -> Result<Self> {
        std::fs::create_dir_all(logs_dir)
            .with_context(|| format!("cannot create log folder {}", logs_dir.display()))?;
        let sink = |stream: &str| -> Result<Sink> {
            let path = logs_dir.join(format!("{component}_{stream}.txt"));
            let file = File::options()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            Ok(Sink {
                file: BufWriter::new(file),
                echo: echo.then(|| format!("[{component}] ")),
            })
        };
        let sinks = [sink("stdout")?, sink("stderr")?];
        let (queue, lines) = mpsc::channel();
        let room = PollSemaphore::new(Arc::new(Semaphore::new(QUEUE_BYTES)));
        std::thread::Builder::new()
            .name(format!("logs-{component}"))
            .spawn(move || append_all(sinks, lines))
            .context("cannot start the log writer thread")?;
        Ok(ComponentLogs {
            stdout: Writer {
                stream: Stream::Stdout,
                queue: queue.clone(),
                room: room.clone(),
            },
            stderr: Writer {
                stream: Stream::Stderr,
                queue,
                room,
            },
        })
    }

    pub fn stdout(&self) -> AsyncStdoutStream {
        AsyncStdoutStream::new(STREAM_BUDGET, self.stdout.clone())
    }

    pub fn stderr(&self) -> AsyncStdoutStream {
        AsyncStdoutStream::new(STREAM_BUDGET, self.stderr.clone())
    }
}

/// One instance's WASI context: the component's environment and log files.
pub fn wasi_ctx(logs: &ComponentLogs, environment: &[(String, String)]) -> WasiCtx {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(logs.stdout()).stderr(logs.stderr());
    for (key, value) in environment {
        wasi.env(key, value);
    }
    wasi.build()
}

/// How long the writer thread lets writes gather after the first one: a
/// burst of log lines then costs one wake-up and one `write` per file, not
/// a thread hand-off per line.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// The writer thread: appends what arrives in batches, flushing after each,
/// until every instance and the component's runtime are gone.
fn append_all(mut sinks: [Sink; 2], lines: mpsc::Receiver<Queued>) {
    while let Ok(first) = lines.recv() {
        std::thread::sleep(BATCH_WINDOW);
        let mut next = Some(first);
        // Each write's room in the queue is given back once it is written.
        while let Some((stream, bytes, _room)) = next {
            let sink = &mut sinks[stream as usize];
            if let Err(error) = sink.write(&bytes) {
                tracing::warn!("cannot write a component log: {error}");
            }
            next = lines.try_recv().ok();
        }
        for sink in &mut sinks {
            if let Err(error) = sink.file.flush() {
                tracing::warn!("cannot write a component log: {error}");
            }
        }
    }
}

impl Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buf)?;
        if let Some(prefix) = &self.echo {
            let mut out = Vec::with_capacity(buf.len() + prefix.len());
            for line in buf.split_inclusive(|b| *b == b'\n') {
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(line);
            }
            std::io::stderr().write_all(&out)?;
        }
        Ok(())
    }
}

/// Bytes on their way to the writer thread, and the room they take.
type Queued = (Stream, Vec<u8>, OwnedSemaphorePermit);

/// A guest stream's end: queues the bytes for the writer thread once there
/// is room for them.
#[derive(Clone)]
struct Writer {
    stream: Stream,
    queue: mpsc::Sender<Queued>,
    room: PollSemaphore,
}

impl AsyncWrite for Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = buf.len().min(STREAM_BUDGET);
        let permits = u32::try_from(n).expect("a write is at most STREAM_BUDGET bytes");
        let Some(room) = ready!(self.room.poll_acquire_many(cx, permits)) else {
            // The semaphore is never closed; were it, the bytes would go
            // nowhere, as at shutdown.
            return Poll::Ready(Ok(n));
        };
        // The thread ends only when every sender is gone, so a send fails
        // only while the host shuts down; the bytes are then dropped.
        let _ = self.queue.send((self.stream, buf[..n].to_vec(), room));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
