//! What a memoized call tells the outside world: with feature `tracing`, a
//! span per call; with feature `metrics`, counters and histograms through
//! the `metrics` facade. Without either feature, everything here is empty
//! and inlines away.
//!
//! The policy reports each call once, at the one place it knows how the
//! call was served ([`CallOutcome`]); a call's span covers every step of
//! it, including the caller's own computation, so memo's diagnostic lines
//! (`common::diag`) and the user's own spans land inside it.
//!
//! - Span `memoize`, target `memo_runtime::call`, level DEBUG: fields
//!   `function` (the memoized fn's path under the attribute, empty for the
//!   functional API unless [`Options::function`](crate::Options::function)
//!   names it), `outcome` (recorded when the call ends), and `key` (the
//!   stored key) only when the call is not encrypted. Values are never
//!   fields. A refresh that runs detached gets a span of its own, `refresh`,
//!   that follows from the span of the call that started it.
//! - Metrics: counter `memo_calls_total` and histogram
//!   `memo_call_duration_seconds` (labels `function`, `outcome`), histogram
//!   `memo_compute_duration_seconds` (`function`), counter
//!   `memo_invalidations_total` (`kind`: `key`, `tag`), gauges
//!   `memo_local_entries` and `memo_local_bytes`; counter
//!   `memo_backend_errors_total` (`kind`) is counted with the other
//!   failure counters (`common::counters`). The `function` label is a
//!   `&'static str` the code names, never the key, so its cardinality is
//!   the number of memoized functions.

use std::future::Future;
use std::time::Duration;

use super::Call;

/// How a memoized call was served: the `outcome` of its span and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    /// A fresh value from the cache.
    Hit,
    /// This process's local copy.
    Local,
    /// Nothing usable in the cache: the call computed.
    Miss,
    /// The value another call in this process computed meanwhile.
    Coalesced,
    /// A value past its expiry, while it is refreshed.
    Stale,
    /// The call computed a refresh: a forced overwrite, or a refresh it won
    /// and ran itself.
    Refresh,
    /// The last good value, after the recomputation failed.
    FailSafe,
}

impl CallOutcome {
    /// The outcome as the span field and metric label spell it.
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Hit => "hit",
            CallOutcome::Local => "local",
            CallOutcome::Miss => "miss",
            CallOutcome::Coalesced => "coalesced",
            CallOutcome::Stale => "stale",
            CallOutcome::Refresh => "refresh",
            CallOutcome::FailSafe => "fail_safe",
        }
    }
}

/// One memoized call under observation: its span and when it started.
pub(crate) struct Observed {
    #[cfg(feature = "tracing")]
    span: tracing::Span,
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
    #[cfg(feature = "metrics")]
    function: &'static str,
}

impl Observed {
    /// Starts observing `call`.
    #[inline]
    pub(crate) fn start(call: &Call) -> Observed {
        let _ = call;
        Observed {
            #[cfg(feature = "tracing")]
            span: call_span(call),
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
            #[cfg(feature = "metrics")]
            function: call.options.function,
        }
    }

    /// Starts observing a batch (`cache_memoize_many`) of `calls`, which is
    /// not empty: one span `memoize_many`, with the function and the
    /// number of keys, and no key.
    #[inline]
    pub(crate) fn start_many(calls: &[Call]) -> Observed {
        let _ = calls;
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        let first = &calls[0];
        Observed {
            #[cfg(feature = "tracing")]
            span: tracing::debug_span!(
                target: "memo_runtime::call",
                "memoize_many",
                function = first.options.function,
                keys = calls.len(),
                outcome = tracing::field::Empty,
            ),
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
            #[cfg(feature = "metrics")]
            function: first.options.function,
        }
    }

    /// Ends a batch whose keys were served as `outcomes`: each key counts
    /// as a call in `memo_calls_total`; the batch, `miss` when it computed
    /// and `hit` otherwise, is the span's outcome and one sample of
    /// `memo_call_duration_seconds`.
    #[inline]
    pub(crate) fn end_many(self, outcomes: impl Iterator<Item = CallOutcome>) {
        let _ = outcomes;
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        {
            let mut overall = CallOutcome::Hit;
            for outcome in outcomes {
                if outcome == CallOutcome::Miss {
                    overall = CallOutcome::Miss;
                }
                #[cfg(feature = "metrics")]
                metrics::counter!(
                    "memo_calls_total",
                    "function" => self.function,
                    "outcome" => outcome.as_str()
                )
                .increment(1);
            }
            #[cfg(feature = "tracing")]
            self.span.record("outcome", overall.as_str());
            #[cfg(feature = "metrics")]
            metrics::histogram!(
                "memo_call_duration_seconds",
                "function" => self.function,
                "outcome" => overall.as_str()
            )
            .record(self.started.elapsed().as_secs_f64());
        }
    }

    /// `work`, run inside the call's span.
    #[inline]
    pub(crate) fn cover<F: Future>(&self, work: F) -> impl Future<Output = F::Output> {
        #[cfg(feature = "tracing")]
        {
            tracing::Instrument::instrument(work, self.span.clone())
        }
        #[cfg(not(feature = "tracing"))]
        {
            work
        }
    }

    /// `work`, a synchronous step of the call, run inside its span.
    #[inline]
    pub(crate) fn within<R>(&self, work: impl FnOnce() -> R) -> R {
        #[cfg(feature = "tracing")]
        {
            self.span.in_scope(work)
        }
        #[cfg(not(feature = "tracing"))]
        {
            work()
        }
    }

    /// Ends the call, served as `outcome`.
    #[inline]
    pub(crate) fn end(self, outcome: CallOutcome) {
        let _ = outcome;
        #[cfg(feature = "tracing")]
        self.span.record("outcome", outcome.as_str());
        #[cfg(feature = "metrics")]
        {
            let labels = [("function", self.function), ("outcome", outcome.as_str())];
            metrics::counter!("memo_calls_total", &labels).increment(1);
            metrics::histogram!("memo_call_duration_seconds", &labels)
                .record(self.started.elapsed().as_secs_f64());
        }
    }

    /// The span a refresh detached from this call runs in: a root of its
    /// own (the call may be long gone when it runs), made now, while the
    /// call's span is open, so that it follows from it.
    #[inline]
    pub(crate) fn link(&self, call: &Call) -> Link {
        let _ = call;
        Link {
            #[cfg(feature = "tracing")]
            span: {
                let span = tracing::debug_span!(
                    target: "memo_runtime::call",
                    parent: None,
                    "refresh",
                    function = call.options.function,
                    key = tracing::field::Empty,
                );
                if call.encryption.is_none() && !span.is_disabled() {
                    span.record("key", call.key.stored());
                }
                span.follows_from(&self.span);
                span
            },
        }
    }
}

/// The span of `call`: `key` only when the call is not encrypted.
#[cfg(feature = "tracing")]
fn call_span(call: &Call) -> tracing::Span {
    let span = tracing::debug_span!(
        target: "memo_runtime::call",
        "memoize",
        function = call.options.function,
        outcome = tracing::field::Empty,
        key = tracing::field::Empty,
    );
    if call.encryption.is_none() && !span.is_disabled() {
        span.record("key", call.key.stored());
    }
    span
}

/// The span of a refresh detached from the call that won it (see
/// [`Observed::link`]).
pub(crate) struct Link {
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

impl Link {
    /// `work`, the detached refresh, run inside its span.
    #[inline]
    pub(crate) fn cover<F: Future>(self, work: F) -> impl Future<Output = F::Output> {
        #[cfg(feature = "tracing")]
        {
            tracing::Instrument::instrument(work, self.span)
        }
        #[cfg(not(feature = "tracing"))]
        {
            work
        }
    }
}

/// A computation of `call`'s that took `took`.
#[inline]
pub(crate) fn computed(call: &Call, took: Duration) {
    let _ = (call, took);
    #[cfg(feature = "metrics")]
    metrics::histogram!("memo_compute_duration_seconds", "function" => call.options.function)
        .record(took.as_secs_f64());
}

/// What an invalidation dropped.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dropped {
    /// One entry, by its key.
    Key,
    /// Every entry stored with a tag.
    Tag,
}

/// An invalidation, of a key (`invalidate`, `_invalidate`) or a tag.
#[inline]
pub(crate) fn invalidated(what: Dropped, name: &str, encrypted: bool) {
    let kind = match what {
        Dropped::Key => "key",
        Dropped::Tag => "tag",
    };
    let _ = (kind, name, encrypted);
    #[cfg(feature = "tracing")]
    if encrypted {
        tracing::debug!(target: "memo_runtime::call", kind, "memo: invalidated an encrypted {kind}");
    } else {
        tracing::debug!(target: "memo_runtime::call", kind, name, "memo: invalidated {kind} {name}");
    }
    #[cfg(feature = "metrics")]
    metrics::counter!("memo_invalidations_total", "kind" => kind).increment(1);
}

/// How many local copies an engine keeps, and their weight in bytes.
#[inline]
pub(crate) fn local_copies(entries: usize, bytes: u64) {
    let _ = (entries, bytes);
    #[cfg(feature = "metrics")]
    {
        metrics::gauge!("memo_local_entries").set(entries as f64);
        metrics::gauge!("memo_local_bytes").set(bytes as f64);
    }
}
