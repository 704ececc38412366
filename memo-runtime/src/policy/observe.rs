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
//!   failure counters (`common::counters`). The `function` label comes
//!   from a `static` [`Function`] in the code, never from the key, so its
//!   cardinality is the number of memoized functions.

use std::future::Future;
use std::time::Duration;

use super::Call;

/// A memoized function as spans and metrics name it: the `function` field
/// and label (see [`Options::function`](crate::Options::function)).
///
/// A `static`, one per function: the attribute makes one for each
/// memoized fn, named by its path; the functional API names its calls
/// with one of its own. With feature `metrics` it also holds the metric
/// keys of its calls, built on first use, so that counting a call
/// allocates nothing.
///
/// ```
/// use memo_runtime::Function;
///
/// static SEARCH: Function = Function::new("search::results");
/// assert_eq!(SEARCH.name(), "search::results");
/// ```
pub struct Function {
    name: &'static str,
    #[cfg(feature = "metrics")]
    keys: std::sync::OnceLock<CallKeys>,
}

impl Function {
    /// The function named `name`.
    pub const fn new(name: &'static str) -> Function {
        Function {
            name,
            #[cfg(feature = "metrics")]
            keys: std::sync::OnceLock::new(),
        }
    }

    /// The function's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The keys of `memo_calls_total` and `memo_call_duration_seconds` for
    /// this function, by outcome.
    #[cfg(feature = "metrics")]
    fn keys(&self) -> &CallKeys {
        self.keys.get_or_init(|| {
            let key = |metric: &'static str, outcome: CallOutcome| {
                metrics::Key::from_parts(
                    metric,
                    vec![
                        metrics::Label::from_static_parts("function", self.name),
                        metrics::Label::from_static_parts("outcome", outcome.as_str()),
                    ],
                )
            };
            CallKeys {
                calls: CallOutcome::ALL.map(|outcome| key("memo_calls_total", outcome)),
                durations: CallOutcome::ALL
                    .map(|outcome| key("memo_call_duration_seconds", outcome)),
            }
        })
    }
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Function").field(&self.name).finish()
    }
}

impl PartialEq for Function {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Function {}

/// The function of the calls that name none.
pub(crate) static UNNAMED: Function = Function::new("");

/// A function's metric keys, by [`CallOutcome`] (its discriminant).
#[cfg(feature = "metrics")]
struct CallKeys {
    calls: [metrics::Key; CallOutcome::ALL.len()],
    durations: [metrics::Key; CallOutcome::ALL.len()],
}

/// What memo's metrics say of where they come from.
#[cfg(feature = "metrics")]
static METADATA: metrics::Metadata<'static> = metrics::Metadata::new(
    "memo_runtime::call",
    metrics::Level::INFO,
    Some(module_path!()),
);

/// How a memoized call was served: the `outcome` of its span and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
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
    /// Every outcome, in the order of their discriminants.
    #[cfg(feature = "metrics")]
    const ALL: [CallOutcome; 7] = [
        CallOutcome::Hit,
        CallOutcome::Local,
        CallOutcome::Miss,
        CallOutcome::Coalesced,
        CallOutcome::Stale,
        CallOutcome::Refresh,
        CallOutcome::FailSafe,
    ];

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
    function: &'static Function,
}

impl Observed {
    /// Starts observing `call`.
    #[inline]
    pub(crate) fn start(call: &Call<'_>) -> Observed {
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

    /// Starts observing `call`, which started at `started`: a clock reading
    /// the call took anyway (to check its local copy's expiry), so that
    /// timing it costs one more, at its end, and none without `metrics`.
    #[inline]
    pub(crate) fn start_at(call: &Call<'_>, started: std::time::Instant) -> Observed {
        let _ = (call, started);
        Observed {
            #[cfg(feature = "tracing")]
            span: call_span(call),
            #[cfg(feature = "metrics")]
            started,
            #[cfg(feature = "metrics")]
            function: call.options.function,
        }
    }

    /// Starts observing a batch (`cache_memoize_many`) of `calls`, which is
    /// not empty: one span `memoize_many`, with the function and the
    /// number of keys, and no key.
    #[inline]
    pub(crate) fn start_many(calls: &[Call<'_>]) -> Observed {
        let _ = calls;
        #[cfg(any(feature = "tracing", feature = "metrics"))]
        let first = &calls[0];
        Observed {
            #[cfg(feature = "tracing")]
            span: tracing::debug_span!(
                target: "memo_runtime::call",
                "memoize_many",
                function = first.options.function.name(),
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
                metrics::with_recorder(|recorder| {
                    let key = &self.function.keys().calls[outcome as usize];
                    recorder.register_counter(key, &METADATA).increment(1);
                });
            }
            #[cfg(feature = "tracing")]
            if !self.span.is_disabled() {
                self.span.record("outcome", overall.as_str());
            }
            #[cfg(feature = "metrics")]
            metrics::with_recorder(|recorder| {
                let key = &self.function.keys().durations[overall as usize];
                let seconds = self.started.elapsed().as_secs_f64();
                recorder.register_histogram(key, &METADATA).record(seconds);
            });
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
        // A disabled span still looks its field up by name (tracing's `log`
        // feature keeps its metadata): not worth it when nobody listens.
        #[cfg(feature = "tracing")]
        if !self.span.is_disabled() {
            self.span.record("outcome", outcome.as_str());
        }
        #[cfg(feature = "metrics")]
        {
            let keys = self.function.keys();
            let at = outcome as usize;
            let seconds = self.started.elapsed().as_secs_f64();
            metrics::with_recorder(|recorder| {
                recorder
                    .register_counter(&keys.calls[at], &METADATA)
                    .increment(1);
                recorder
                    .register_histogram(&keys.durations[at], &METADATA)
                    .record(seconds);
            });
        }
    }

    /// The span a refresh detached from this call runs in: a root of its
    /// own (the call may be long gone when it runs), made now, while the
    /// call's span is open, so that it follows from it.
    #[inline]
    pub(crate) fn link(&self, call: &Call<'_>) -> Link {
        let _ = call;
        Link {
            #[cfg(feature = "tracing")]
            span: {
                let span = tracing::debug_span!(
                    target: "memo_runtime::call",
                    parent: None,
                    "refresh",
                    function = call.options.function.name(),
                    key = tracing::field::Empty,
                );
                with_key(&span, call);
                span.follows_from(&self.span);
                span
            },
        }
    }
}

/// The span of `call`: `key` only when the call is not encrypted.
#[cfg(feature = "tracing")]
fn call_span(call: &Call<'_>) -> tracing::Span {
    let span = tracing::debug_span!(
        target: "memo_runtime::call",
        "memoize",
        function = call.options.function.name(),
        outcome = tracing::field::Empty,
        key = tracing::field::Empty,
    );
    with_key(&span, call);
    span
}

/// Records `call`'s stored key on `span`, only when the call is not
/// encrypted (and somebody listens).
#[cfg(feature = "tracing")]
fn with_key(span: &tracing::Span, call: &Call<'_>) {
    if call.encryption.is_none() && !span.is_disabled() {
        span.record("key", call.key.stored());
    }
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
pub(crate) fn computed(call: &Call<'_>, took: Duration) {
    let _ = (call, took);
    #[cfg(feature = "metrics")]
    metrics::histogram!("memo_compute_duration_seconds", "function" => call.options.function.name())
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

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    /// A function's keys are indexed by the outcome's discriminant, so
    /// `ALL` lists the outcomes in that order, and each key names its own.
    #[test]
    fn each_outcome_finds_its_own_keys() {
        static F: Function = Function::new("tests::f");
        for (at, outcome) in CallOutcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, at);
            for (key, name) in [
                (&F.keys().calls[at], "memo_calls_total"),
                (&F.keys().durations[at], "memo_call_duration_seconds"),
            ] {
                assert_eq!(key.name(), name);
                let labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
                assert_eq!(
                    labels,
                    [("function", "tests::f"), ("outcome", outcome.as_str())]
                );
            }
        }
        // Built once: the same keys on every call.
        assert!(std::ptr::eq(F.keys(), F.keys()));
    }
}
