//! Capturing `tracing` output in a test that runs beside hundreds of others in one process.
//!
//! `tracing` caches each callsite's interest process-wide, computed once when the callsite is
//! first reached. While at most one dispatcher is registered, that computation asks the
//! *registering thread's* default. So a test thread without a subscriber that reaches the cache's
//! span first, while another test's capture is the only dispatcher, caches `never` for that span
//! in every thread, and the capture misses it (the flake seen in CI on
//! `composition::trace_layer_outside_the_cache_sees_hits_and_holds_the_cache_span`).
//!
//! [`LogCapture::start`] first installs, once per process, a global subscriber that enables
//! nothing but answers every callsite with `Interest::sometimes()`. From then on a callsite's
//! cached interest is never `never`: each event asks the current thread's subscriber, so a
//! thread-local capture sees every span and event of its own thread, whichever thread got there
//! first.

use std::sync::{Arc, Mutex, OnceLock};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::{DefaultGuard, Interest};
use tracing::{span, Event, Metadata, Subscriber};

/// The process-wide subscriber: enables nothing, caches nothing.
struct Undecided;

impl Subscriber for Undecided {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        false
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        // The global maximum is the highest hint of the live subscribers: OFF here keeps every
        // macro a no-op in threads without a capture while no capture is alive.
        Some(LevelFilter::OFF)
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        // Never called: `enabled` is false for every span.
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

/// Installs [`Undecided`] as the global default, once.
fn install_global() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        tracing::subscriber::set_global_default(Undecided)
            .expect("nothing else in the test binary sets a global subscriber");
    });
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything the current thread logs at any level while it lives, spans included (one line
/// per closed span, with its fields), without ANSI colours.
pub struct LogCapture {
    buffer: Buffer,
    _guard: DefaultGuard,
}

impl LogCapture {
    /// Starts capturing on the current thread (use a `current_thread` runtime, so every task of
    /// the test polls here).
    pub fn start() -> Self {
        install_global();
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        LogCapture { buffer, _guard }
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.buffer.0.lock().unwrap().clone()).expect("fmt writes UTF-8")
    }
}

/// One callsite, reached only by the test below.
fn probe(from: &str) {
    tracing::info!(from, "trace-capture probe");
}

/// The race, made deterministic: a thread without a subscriber reaches a callsite first while a
/// capture is the only registered dispatcher; the capture must still see the callsite afterwards.
/// Without the global subscriber, the first reach caches `never` and the capture is empty.
#[test]
fn a_callsite_reached_first_by_a_thread_without_a_subscriber_is_still_captured() {
    let capture = LogCapture::start();
    std::thread::spawn(|| probe("other")).join().unwrap();
    probe("capture");
    let log = capture.text();
    assert!(
        log.contains("trace-capture probe from=\"capture\""),
        "the capturing thread's event: {log:?}"
    );
    assert!(
        !log.contains("from=\"other\""),
        "nor another thread's: {log:?}"
    );
}
