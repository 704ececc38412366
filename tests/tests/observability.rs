//! memo as a service's observability sees it (features `tracing` and
//! `metrics`): every memoized call is a span with its function and
//! outcome, memo's lines are events inside it, and the `metrics` facade
//! counts calls, computations, invalidations and backend failures.
//!
//! A `tracing` layer of this file's own records every span and event, and
//! the `metrics` facade's debugging recorder every metric; both are
//! installed once for this test binary (so no other test shares it), and
//! each test tells its own records apart by a function name or key of its
//! own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use memo_runtime::{
    Config, EncryptionKey, Function, MemoryBackend, Options, cache_memoize, cache_memoize_async,
    cache_memoize_detached, cache_memoize_iter, configure, invalidate, invalidate_tag,
    try_cache_memoize,
};
use memo_tests::behaviour::eventually;
use memo_tests::runtime::run;
use memo_tests::serial;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

// ---------------------------------------------------------------------------
// A layer that records spans and events.

/// A span as the layer saw it. Spans are told apart by `seq`, which the
/// registry never reuses (it does reuse span ids).
#[derive(Debug, Clone, Default)]
struct SpanSeen {
    seq: u64,
    name: &'static str,
    target: String,
    fields: BTreeMap<String, String>,
    parent: Option<u64>,
    follows: Vec<u64>,
    enters: usize,
}

/// An event as the layer saw it, with the span it happened in.
#[derive(Debug, Clone)]
struct EventSeen {
    fields: BTreeMap<String, String>,
    span: Option<u64>,
}

#[derive(Default)]
struct Seen {
    spans: Mutex<Vec<SpanSeen>>,
    events: Mutex<Vec<EventSeen>>,
    next: AtomicU64,
}

/// The sequence number the layer gave a span, kept in its extensions.
struct Seq(u64);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

struct Recorder(&'static Seen);

fn seq_of<S: Subscriber + for<'a> LookupSpan<'a>>(ctx: &Context<'_, S>, id: &Id) -> Option<u64> {
    let span = ctx.span(id)?;
    let extensions = span.extensions();
    extensions.get::<Seq>().map(|seq| seq.0)
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let seq = self.0.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent().map(|parent| parent.id()))
            .and_then(|parent| seq_of(&ctx, &parent));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Seq(seq));
        }
        self.0.spans.lock().unwrap().push(SpanSeen {
            seq,
            name: attrs.metadata().name(),
            target: attrs.metadata().target().to_owned(),
            fields,
            parent,
            follows: Vec::new(),
            enters: 0,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(seq) = seq_of(&ctx, id) else { return };
        let mut spans = self.0.spans.lock().unwrap();
        if let Some(span) = spans.iter_mut().find(|span| span.seq == seq) {
            values.record(&mut Fields(&mut span.fields));
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        let (Some(seq), Some(follows)) = (seq_of(&ctx, id), seq_of(&ctx, follows)) else {
            return;
        };
        let mut spans = self.0.spans.lock().unwrap();
        if let Some(span) = spans.iter_mut().find(|span| span.seq == seq) {
            span.follows.push(follows);
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(seq) = seq_of(&ctx, id) else { return };
        let mut spans = self.0.spans.lock().unwrap();
        if let Some(span) = spans.iter_mut().find(|span| span.seq == seq) {
            span.enters += 1;
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let span = ctx
            .event_span(event)
            .and_then(|span| span.extensions().get::<Seq>().map(|seq| seq.0));
        self.0
            .events
            .lock()
            .unwrap()
            .push(EventSeen { fields, span });
    }
}

/// What the layer has seen, installed on first use.
fn seen() -> &'static Seen {
    static SEEN: OnceLock<&'static Seen> = OnceLock::new();
    SEEN.get_or_init(|| {
        let seen: &'static Seen = Box::leak(Box::default());
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(Recorder(seen)),
        )
        .expect("the only subscriber of this test binary");
        seen
    })
}

/// The spans named `memoize` whose `function` is `function`, in order.
fn calls_of(function: &str) -> Vec<SpanSeen> {
    seen()
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|span| span.name == "memoize")
        .filter(|span| span.fields.get("function").map(String::as_str) == Some(function))
        .cloned()
        .collect()
}

/// The outcomes of the spans of `function`, in order.
fn outcomes_of(function: &str) -> Vec<String> {
    calls_of(function)
        .iter()
        .map(|span| span.fields.get("outcome").cloned().unwrap_or_default())
        .collect()
}

// ---------------------------------------------------------------------------
// The debugging recorder.

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this test binary");
        snapshotter
    })
}

/// A metric's labels, sorted.
type Labels = Vec<(String, String)>;

/// Every metric recorded since the last snapshot (a snapshot drains the
/// recorder): name, labels, value.
struct Metrics(Vec<(String, Labels, DebugValue)>);

impl Metrics {
    fn take() -> Metrics {
        Metrics(
            snapshotter()
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| {
                    let key = key.key();
                    let mut labels: Labels = key
                        .labels()
                        .map(|label| (label.key().to_owned(), label.value().to_owned()))
                        .collect();
                    labels.sort();
                    (key.name().to_owned(), labels, value)
                })
                .collect(),
        )
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a DebugValue> + 'a {
        self.0
            .iter()
            .filter(move |(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, value)| value)
    }

    /// The sum of the counters `name` with (at least) `labels`.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.matching(name, labels)
            .map(|value| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    }

    /// The values recorded by the histograms `name` with `labels`.
    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.matching(name, labels)
            .flat_map(|value| match value {
                DebugValue::Histogram(values) => {
                    values.iter().map(|v| v.into_inner()).collect::<Vec<f64>>()
                }
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .collect()
    }

    /// The last value set on the gauge `name`, if it was set.
    fn gauge(&self, name: &str) -> Option<f64> {
        self.matching(name, &[])
            .map(|value| match value {
                DebugValue::Gauge(v) => v.into_inner(),
                other => panic!("{name} is not a gauge: {other:?}"),
            })
            .last()
    }
}

/// Both recorders installed, the embedded store configured, and the
/// metrics so far drained.
fn fresh() {
    seen();
    configure(Config::new(MemoryBackend::new()));
    Metrics::take();
}

/// A function named `name`, made once per name: as a `static` would be,
/// for names a test makes up as it goes.
fn named(name: &'static str) -> &'static Function {
    static MADE: Mutex<Vec<&'static Function>> = Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap();
    if let Some(function) = made.iter().find(|function| function.name() == name) {
        return function;
    }
    let function: &'static Function = Box::leak(Box::new(Function::new(name)));
    made.push(function);
    function
}

// ---------------------------------------------------------------------------

#[test]
fn every_outcome_is_a_span_and_a_count() {
    let _serial = serial();
    fresh();
    const F: &str = "obs::outcomes";
    let options = Options::new().function(named(F));
    let one = || 1u32;

    // miss, hit
    let _: u32 = cache_memoize("obs:plain", one, &options);
    let _: u32 = cache_memoize("obs:plain", one, &options);
    // local: the first call keeps the copy the second is served
    let local = options.clone().local(Duration::from_secs(60));
    let _: u32 = cache_memoize("obs:local", one, &local);
    let _: u32 = cache_memoize("obs:local", one, &local);
    // coalesced: a second caller joins the first one's computation
    let started = Arc::new(Barrier::new(2));
    let leader = thread::spawn({
        let (options, started) = (options.clone(), Arc::clone(&started));
        move || {
            cache_memoize::<_, u32, _>(
                "obs:coalesced",
                || {
                    started.wait();
                    thread::sleep(Duration::from_millis(300));
                    7
                },
                &options,
            )
        }
    });
    started.wait();
    thread::sleep(Duration::from_millis(50));
    let joined: u32 = cache_memoize("obs:coalesced", || 8, &options);
    assert_eq!((leader.join().unwrap(), joined), (7, 7));
    // refresh: a forced overwrite
    let _: u32 = cache_memoize("obs:plain", one, &options.clone().force_overwrite(true));
    // stale and refresh: one caller refreshes an expired value in its
    // foreground while another is served the stale one; fail-safe: a
    // recomputation that fails serves the last good value.
    let expiring = options
        .clone()
        .expiration(Duration::from_secs(1))
        .stale_while_revalidate(Duration::from_secs(30));
    let failing = options
        .expiration(Duration::from_secs(1))
        .fail_safe(Duration::from_secs(30));
    let _: u32 = cache_memoize("obs:stale", one, &expiring);
    let _: Result<u32, String> = try_cache_memoize("obs:fail-safe", || Ok(3), &failing);
    thread::sleep(Duration::from_millis(1_100));
    let refreshing = Arc::new(Barrier::new(2));
    let refresher = thread::spawn({
        let (expiring, refreshing) = (expiring.clone(), Arc::clone(&refreshing));
        move || {
            cache_memoize::<_, u32, _>(
                "obs:stale",
                || {
                    refreshing.wait();
                    thread::sleep(Duration::from_millis(300));
                    2
                },
                &expiring,
            )
        }
    });
    refreshing.wait();
    let stale: u32 = cache_memoize("obs:stale", || 9, &expiring);
    assert_eq!((stale, refresher.join().unwrap()), (1, 2));
    let fallback: Result<u32, String> =
        try_cache_memoize("obs:fail-safe", || Err("down".to_owned()), &failing);
    assert_eq!(fallback, Ok(3));

    let mut outcomes = outcomes_of(F);
    outcomes.sort();
    let mut expected = vec![
        "miss",
        "hit",
        "miss",
        "local",
        "miss",
        "coalesced",
        "refresh",
        "miss",
        "miss",
        "refresh",
        "stale",
        "fail_safe",
    ];
    expected.sort_unstable();
    assert_eq!(outcomes, expected);
    for span in calls_of(F) {
        assert_eq!(span.target, "memo_runtime::call", "{span:?}");
        assert!(span.fields.contains_key("key"), "not encrypted: {span:?}");
    }

    let metrics = Metrics::take();
    for outcome in [
        "miss",
        "hit",
        "local",
        "coalesced",
        "refresh",
        "stale",
        "fail_safe",
    ] {
        let labels = [("function", F), ("outcome", outcome)];
        let count = expected.iter().filter(|o| **o == outcome).count() as u64;
        assert_eq!(
            metrics.counter("memo_calls_total", &labels),
            count,
            "memo_calls_total {outcome}"
        );
        let durations = metrics.histogram("memo_call_duration_seconds", &labels);
        assert_eq!(durations.len() as u64, count, "durations of {outcome}");
        assert!(durations.iter().all(|d| *d >= 0.0 && d.is_finite()));
    }
    // Computed: the five misses, the forced overwrite, the foreground
    // refresh and the failed fail-safe attempt.
    let computed = metrics.histogram("memo_compute_duration_seconds", &[("function", F)]);
    assert_eq!(computed.len(), 8, "{computed:?}");
    assert!(
        computed.iter().any(|secs| *secs >= 0.29),
        "the 300 ms computations: {computed:?}"
    );
}

#[memo_runtime::cache_memoize(key = "obs:attr:{id}")]
fn profile(id: u64) -> String {
    format!("profile {id}")
}

#[memo_runtime::cache_memoize(key = "obs:attr-async:{id}")]
async fn profile_async(id: u64) -> String {
    tokio::task::yield_now().await;
    format!("profile {id}")
}

#[test]
fn the_attribute_names_the_function_by_its_path() {
    let _serial = serial();
    fresh();
    assert_eq!(profile(1), "profile 1");
    assert_eq!(profile(1), "profile 1");
    assert_eq!(run(profile_async(2)), "profile 2");
    assert_eq!(run(profile_async(2)), "profile 2");
    assert_eq!(outcomes_of("observability::profile"), ["miss", "hit"]);
    assert_eq!(outcomes_of("observability::profile_async"), ["miss", "hit"]);
    let metrics = Metrics::take();
    for function in ["observability::profile", "observability::profile_async"] {
        for outcome in ["miss", "hit"] {
            let labels = [("function", function), ("outcome", outcome)];
            assert_eq!(
                metrics.counter("memo_calls_total", &labels),
                1,
                "{labels:?}"
            );
        }
    }
    // The functional API names no function unless told.
    let _: u8 = cache_memoize("obs:unnamed", || 1, &Options::new());
    let unnamed: Vec<_> = calls_of("")
        .into_iter()
        .filter(|span| span.fields["key"].contains("obs:unnamed"))
        .collect();
    assert_eq!(unnamed.len(), 1, "{unnamed:?}");
    assert_eq!(
        Metrics::take().counter("memo_calls_total", &[("function", ""), ("outcome", "miss")]),
        1
    );
}

/// A value whose every clone takes [`SLOW_CLONE`]: what handing out a
/// local copy costs, and so what a local hit's duration must cover.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct SlowClone(u64);

const SLOW_CLONE: Duration = Duration::from_millis(20);

impl Clone for SlowClone {
    fn clone(&self) -> Self {
        std::thread::sleep(SLOW_CLONE);
        SlowClone(self.0)
    }
}

#[memo_runtime::cache_memoize(key = "obs:slow-clone:{id}", local = 60)]
fn slow_clone(id: u64) -> SlowClone {
    SlowClone(id)
}

#[test]
fn a_local_hit_is_timed_over_the_copy_it_hands_out() {
    let _serial = serial();
    fresh();
    assert_eq!(slow_clone(1), SlowClone(1));
    assert_eq!(slow_clone(1), SlowClone(1));
    assert_eq!(outcomes_of("observability::slow_clone"), ["miss", "local"]);
    let durations = Metrics::take().histogram(
        "memo_call_duration_seconds",
        &[
            ("function", "observability::slow_clone"),
            ("outcome", "local"),
        ],
    );
    assert_eq!(durations.len(), 1, "{durations:?}");
    assert!(
        durations[0] >= SLOW_CLONE.as_secs_f64(),
        "a local hit that took at least {SLOW_CLONE:?} was timed at {}s",
        durations[0]
    );
}

#[test]
fn an_encrypted_call_shows_neither_its_key_nor_its_value() {
    let _serial = serial();
    fresh();
    const KEY: &str = "obs-secret-key-3141";
    const VALUE: &str = "obs-secret-value-2718";
    let before = (
        seen().spans.lock().unwrap().len(),
        seen().events.lock().unwrap().len(),
    );
    let encrypted = Options::new()
        .function(named("obs::encrypted"))
        .encrypt(true)
        .encryption_key(EncryptionKey::new(b"0123456789abcdef").unwrap())
        .lock(memo_runtime::LockOptions::new());
    for _ in 0..2 {
        let value: String = cache_memoize(KEY, || VALUE.to_owned(), &encrypted);
        assert_eq!(value, VALUE);
    }
    invalidate(KEY, &encrypted).unwrap();
    let _: String = cache_memoize(KEY, || VALUE.to_owned(), &encrypted.large_data(true));
    assert_eq!(outcomes_of("obs::encrypted"), ["miss", "hit", "miss"]);
    let spans = seen().spans.lock().unwrap()[before.0..].to_vec();
    let events = seen().events.lock().unwrap()[before.1..].to_vec();
    assert!(events.iter().any(|event| {
        event
            .fields
            .get("message")
            .is_some_and(|m| m.contains("invalidated"))
    }));
    let fields = spans
        .iter()
        .flat_map(|span| span.fields.iter())
        .chain(events.iter().flat_map(|event| event.fields.iter()));
    for (name, value) in fields {
        assert!(
            !value.contains(KEY) && !value.contains(VALUE),
            "{name} = {value}"
        );
    }
    // The same call unencrypted shows its key, and never its value.
    let plain = Options::new().function(named("obs::plain-key"));
    let _: String = cache_memoize(KEY, || VALUE.to_owned(), &plain);
    let spans = calls_of("obs::plain-key");
    assert!(spans[0].fields["key"].contains(KEY), "{spans:?}");
    assert!(spans[0].fields.values().all(|value| !value.contains(VALUE)));
}

#[test]
fn an_async_call_s_span_covers_its_awaits_inside_the_caller_s_span() {
    let _serial = serial();
    fresh();
    let options = Options::new().function(named("obs::async"));
    let request = tracing::info_span!("request");
    let value: u32 = run(tracing::Instrument::instrument(
        cache_memoize_async(
            "obs:async",
            || async {
                tracing::info!("before the await");
                tokio::time::sleep(Duration::from_millis(20)).await;
                tokio::task::yield_now().await;
                tracing::info!("after the await");
                4
            },
            &options,
        ),
        request,
    ));
    assert_eq!(value, 4);
    let [call] = &calls_of("obs::async")[..] else {
        panic!("one span: {:?}", calls_of("obs::async"));
    };
    assert_eq!(call.fields["outcome"], "miss");
    assert!(call.enters >= 2, "entered on every poll: {call:?}");
    let request_seq = seen()
        .spans
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|span| span.name == "request")
        .map(|span| span.seq);
    assert_eq!(call.parent, request_seq, "a child of the caller's span");
    let events = seen().events.lock().unwrap().clone();
    for message in ["before the await", "after the await"] {
        let event = events
            .iter()
            .find(|event| event.fields.get("message").map(String::as_str) == Some(message))
            .unwrap_or_else(|| panic!("{message}"));
        assert_eq!(
            event.span,
            Some(call.seq),
            "{message} inside the call's span"
        );
    }
}

#[test]
fn a_detached_refresh_follows_from_the_call_that_started_it() {
    let _serial = serial();
    fresh();
    let options = Options::new()
        .function(named("obs::detached"))
        .expiration(Duration::from_secs(1))
        .stale_while_revalidate(Duration::from_secs(30));
    let _: u32 = cache_memoize_detached("obs:detached", || 1, &options);
    thread::sleep(Duration::from_millis(1_100));
    let stale: u32 = cache_memoize_detached("obs:detached", || 2, &options);
    assert_eq!(stale, 1);
    assert!(eventually(Duration::from_secs(5), || {
        cache_memoize_detached::<_, u32, _>("obs:detached", || 3, &options) == 2
    }));
    let calls = calls_of("obs::detached");
    let starter = calls
        .iter()
        .find(|span| span.fields.get("outcome").map(String::as_str) == Some("stale"))
        .expect("the stale call");
    let spans = seen().spans.lock().unwrap().clone();
    let refresh = spans
        .iter()
        .find(|span| {
            span.name == "refresh"
                && span.fields.get("function").map(String::as_str) == Some("obs::detached")
        })
        .expect("the refresh's span");
    assert_eq!(refresh.parent, None, "a root of its own");
    assert_eq!(refresh.follows, [starter.seq]);
}

#[test]
fn iterators_are_spans_too() {
    let _serial = serial();
    fresh();
    let options = Options::new().function(named("obs::iter"));
    for _ in 0..2 {
        let items: Vec<u8> = cache_memoize_iter("obs:iter", || 0..3u8, &options).collect();
        assert_eq!(items, [0, 1, 2]);
    }
    assert_eq!(outcomes_of("obs::iter"), ["miss", "hit"]);
}

#[test]
fn a_batch_is_one_span_and_each_key_a_call() {
    let _serial = serial();
    fresh();
    const F: &str = "obs::batch";
    let options = Options::new().function(named(F));
    let _: u32 = cache_memoize("obs:batch:1", || 1, &options);
    Metrics::take();
    let values: Vec<u32> = memo_runtime::cache_memoize_many(
        vec!["obs:batch:0", "obs:batch:1", "obs:batch:2"],
        |missing| missing.iter().map(|&i| i as u32).collect(),
        &options,
    );
    assert_eq!(values, [0, 1, 2]);
    let spans = seen().spans.lock().unwrap().clone();
    let batch: Vec<_> = spans
        .iter()
        .filter(|span| span.name == "memoize_many")
        .filter(|span| span.fields.get("function").map(String::as_str) == Some(F))
        .collect();
    assert_eq!(batch.len(), 1, "{batch:?}");
    assert_eq!(batch[0].fields["outcome"], "miss");
    assert_eq!(batch[0].fields["keys"], "3");
    let metrics = Metrics::take();
    let calls =
        |outcome| metrics.counter("memo_calls_total", &[("function", F), ("outcome", outcome)]);
    assert_eq!((calls("hit"), calls("miss")), (1, 2));
    assert_eq!(
        metrics
            .histogram("memo_call_duration_seconds", &[("function", F)])
            .len(),
        1
    );
}

#[test]
fn invalidations_are_counted_by_kind() {
    let _serial = serial();
    fresh();
    let options = Options::new().tags(["obs-tag"]);
    let _: u8 = cache_memoize("obs:invalidated", || 1, &options);
    invalidate("obs:invalidated", &options).unwrap();
    invalidate_tag("obs-tag", &options).unwrap();
    invalidate_tag("obs-tag", &options).unwrap();
    let metrics = Metrics::take();
    assert_eq!(
        metrics.counter("memo_invalidations_total", &[("kind", "key")]),
        1
    );
    assert_eq!(
        metrics.counter("memo_invalidations_total", &[("kind", "tag")]),
        2
    );
}

#[test]
fn local_copies_are_gauged() {
    let _serial = serial();
    fresh();
    let options = Options::new().local(Duration::from_secs(60));
    for key in ["obs:gauge:a", "obs:gauge:b", "obs:gauge:c"] {
        let _: String = cache_memoize(key, || "x".repeat(100), &options);
    }
    let metrics = Metrics::take();
    assert_eq!(metrics.gauge("memo_local_entries"), Some(3.0));
    let bytes = metrics.gauge("memo_local_bytes").expect("set");
    assert!(bytes >= 300.0, "{bytes}");
}

/// A server that accepts connections and never answers.
fn silent_server() -> u16 {
    memo_tests::servers::fake_server(|stream, _| {
        thread::sleep(Duration::from_secs(30));
        drop(stream);
    })
}

#[test]
fn backend_errors_are_counted_and_traced_by_kind() {
    let _serial = serial();
    fresh();
    let refused = memo_tests::servers::free_port();
    let silent = silent_server();
    for scheme in ["memcached", "redis"] {
        for (port, kind) in [(refused, "connection"), (silent, "timeout")] {
            configure(
                Config::from_url(&format!("{scheme}://127.0.0.1:{port}?timeout_ms=200"))
                    .expect("a valid URL"),
            );
            Metrics::take();
            let function: &'static str =
                Box::leak(format!("obs::{scheme}:{kind}").into_boxed_str());
            let value: u8 =
                cache_memoize("obs:down", || 5, &Options::new().function(named(function)));
            assert_eq!(value, 5, "computed without the cache");
            let metrics = Metrics::take();
            assert!(
                metrics.counter("memo_backend_errors_total", &[("kind", kind)]) >= 1,
                "{scheme} {kind}: {:?}",
                metrics.0
            );
            let [call] = &calls_of(function)[..] else {
                panic!("one call");
            };
            assert_eq!(call.fields["outcome"], "miss");
            let events = seen().events.lock().unwrap().clone();
            assert!(
                events.iter().any(|event| event.span == Some(call.seq)
                    && event.fields.get("kind").map(String::as_str) == Some(kind)),
                "{scheme}: an event of kind {kind} inside the call's span"
            );
        }
    }
    configure(Config::new(MemoryBackend::new()));
}
