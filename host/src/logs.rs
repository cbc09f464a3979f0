//! Component stdio: every line a guest prints goes to
//! `<state-dir>/logs/<component>_{stdout,stderr}.txt` (Spin's layout), and,
//! with `--follow-logs`, to the terminal prefixed by the component id.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::AsyncStdoutStream;

/// Bytes a guest may have in flight to one stream before it waits.
const STREAM_BUDGET: usize = 64 * 1024;

/// One component's two log files, shared by all its instances.
#[derive(Clone)]
pub struct ComponentLogs {
    stdout: Arc<Sink>,
    stderr: Arc<Sink>,
}

struct Sink {
    file: Mutex<File>,
    /// `Some(prefix)` when the stream is echoed to the terminal.
    echo: Option<String>,
}

impl ComponentLogs {
    pub fn open(logs_dir: &Path, component: &str, echo: bool) -> Result<Self> {
        std::fs::create_dir_all(logs_dir)
            .with_context(|| format!("cannot create log folder {}", logs_dir.display()))?;
        let sink = |stream: &str| -> Result<Arc<Sink>> {
            let path = logs_dir.join(format!("{component}_{stream}.txt"));
            let file = File::options()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            Ok(Arc::new(Sink {
                file: Mutex::new(file),
                echo: echo.then(|| format!("[{component}] ")),
            }))
        };
        Ok(ComponentLogs {
            stdout: sink("stdout")?,
            stderr: sink("stderr")?,
        })
    }

    pub fn stdout(&self) -> AsyncStdoutStream {
        AsyncStdoutStream::new(STREAM_BUDGET, Writer(Arc::clone(&self.stdout)))
    }

    pub fn stderr(&self) -> AsyncStdoutStream {
        AsyncStdoutStream::new(STREAM_BUDGET, Writer(Arc::clone(&self.stderr)))
    }
}

impl Sink {
    fn write(&self, buf: &[u8]) -> std::io::Result<()> {
        self.file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(buf)?;
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

/// Writes synchronously: appends to a local file do not block meaningfully.
struct Writer(Arc<Sink>);

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.0.write(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
