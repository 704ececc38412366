//! [`cache_memoize_stream`]: a stream cached as it flows, and the state
//! machine behind [`MemoStream`].
//!
//! The stream's items pass through the caller's task; the cache side (the
//! lookup and lock, then either reading and verifying the stored chunks or
//! compressing, encrypting and storing new ones) runs as one job on tokio's
//! blocking pool, the same synchronous pipeline `cache_memoize_iter` uses.
//! The two talk over small bounded channels, so memory stays bounded by a
//! few chunks and a few items, and no poll of the stream does more than
//! serialize or decode one item.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::backend::world::block_on;
use crate::format::envelope::{self, fingerprint};
use crate::format::key::CacheKey;
use crate::lock::CacheLockGuard;
use crate::policy::Call;
use crate::policy::items::ItemsLookup;
use crate::policy::observe::{CallOutcome, Observed};
use crate::policy::options::Options;
use crate::policy::stream::StoreError;

/// How many items may wait in either direction between the stream and the
/// cache side.
const IN_FLIGHT: usize = 4;

/// Memoizes a stream: the async counterpart of
/// [`cache_memoize_iter`](fn@crate::cache_memoize_iter), with the same format,
/// so a sync process and an async one share entries.
///
/// Nothing runs until the first poll. On a miss, `compute` runs and each
/// item reaches the caller as soon as the source yields it, while it is
/// stored in chunks on the way through; the entry becomes visible only once
/// the source ends and every chunk is stored, so a stream dropped half-way,
/// or a source that panics, leaves nothing a reader would take as complete.
/// On a hit the stored chunks are verified, then the items are decoded as
/// the caller polls. If the entry becomes unreadable half-way, `compute`
/// runs and the stream continues where it was, skipping the items already
/// yielded. Streams are not coalesced: concurrent calls each compute.
///
/// Must be polled inside a tokio runtime (the cache side runs on its
/// blocking pool); polled elsewhere it just streams `compute()`, uncached.
///
/// ```
/// use std::future::poll_fn;
/// use std::pin::Pin;
/// use futures_core::Stream;
/// use memo_runtime::{cache_memoize_stream, Options};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// struct Count(u32);
/// impl Stream for Count {
///     type Item = u32;
///     fn poll_next(mut self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<u32>> {
///         self.0 += 1;
///         std::task::Poll::Ready((self.0 <= 3).then_some(self.0))
///     }
/// }
/// let mut stream = cache_memoize_stream("count-doc", || Count(0), &Options::new());
/// let mut items = Vec::new();
/// while let Some(item) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
///     items.push(item);
/// }
/// assert_eq!(items, [1, 2, 3]);
/// # });
/// ```
pub fn cache_memoize_stream<K, T, F, S>(key: K, compute: F, options: &Options) -> MemoStream<T>
where
    K: Into<CacheKey>,
    F: FnOnce() -> S + Send + 'static,
    S: Stream<Item = T> + Send + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
{
    MemoStream {
        state: State::Start {
            key: key.into(),
            options: options.clone(),
        },
        compute: Some(Box::new(move || Box::pin(compute()) as Source<T>)),
    }
}

type Source<T> = Pin<Box<dyn Stream<Item = T> + Send>>;
type Compute<T> = Box<dyn FnOnce() -> Source<T> + Send>;

/// The stream [`cache_memoize_stream`] returns: `Send` and `Unpin`.
#[must_use = "streams do nothing unless polled"]
pub struct MemoStream<T> {
    state: State<T>,
    compute: Option<Compute<T>>,
}

enum State<T> {
    Start {
        key: CacheKey,
        options: Options,
    },
    /// The cache side is looking the entry up.
    Opening {
        opened: oneshot::Receiver<Opened>,
        job: Option<JoinHandle<()>>,
    },
    Hit {
        items: mpsc::Receiver<Read>,
        yielded: u64,
    },
    Miss {
        source: Source<T>,
        store: Option<Store>,
    },
    /// Recomputing after a hit became unreadable, skipping what was
    /// yielded already; or computing without the cache.
    Fallback {
        source: Source<T>,
        skip: u64,
    },
    /// The source ended; waiting for the cache side to store the entry, so
    /// that a call made after the stream ends finds it.
    Finishing(JoinHandle<()>),
    Done,
}

type Reserve = Pin<
    Box<dyn Future<Output = Result<mpsc::OwnedPermit<Write>, mpsc::error::SendError<()>>> + Send>,
>;

/// Where a miss's items go: the channel to the cache side, with room
/// reserved for the next item before the source is polled, so the source
/// never runs ahead of the store by more than [`IN_FLIGHT`] items.
struct Store {
    sender: mpsc::Sender<Write>,
    reserving: Option<Reserve>,
    permit: Option<mpsc::OwnedPermit<Write>>,
    job: JoinHandle<()>,
}

/// What the lookup found.
enum Opened {
    Hit(mpsc::Receiver<Read>),
    /// A miss; the sender takes the items to store, if the call stores.
    Miss(Option<mpsc::Sender<Write>>),
}

/// From the cache side to the stream, on a hit.
enum Read {
    Item(Vec<u8>),
    End,
    Failed,
}

/// From the stream to the cache side, on a miss.
enum Write {
    Item(Vec<u8>),
    Finish,
    /// An item could not be serialized: store nothing, and say why.
    Unstorable(StoreError),
}

impl<T> MemoStream<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    fn compute(&mut self) -> Source<T> {
        match self.compute.take() {
            Some(compute) => compute(),
            // Cannot happen: every state that computes is entered once.
            None => Box::pin(Empty(std::marker::PhantomData)),
        }
    }

    fn start(&mut self, key: CacheKey, options: Options) {
        if tokio::runtime::Handle::try_current().is_err() {
            crate::common::diag::warning!(
                "memo: a memoized stream polled outside a tokio runtime is not cached"
            );
            let source = self.compute();
            self.state = State::Fallback { source, skip: 0 };
            return;
        }
        let call = Call::owning(crate::policy::engine::current(), key, options);
        // Started here, in the caller's task, so that its span is a child
        // of the caller's.
        let observed = Observed::start(&call);
        let (sender, opened) = oneshot::channel();
        let job = tokio::task::spawn_blocking(move || cache_side::<T>(call, observed, sender));
        self.state = State::Opening {
            opened,
            job: Some(job),
        };
    }
}

/// The cache side of one memoized stream, on the blocking pool. Its span
/// covers the lookup: the outcome is known once the stream opens.
fn cache_side<T: DeserializeOwned>(
    call: Call<'_>,
    observed: Observed,
    opened: oneshot::Sender<Opened>,
) {
    let driver = call.blocking().clone();
    let (found, lock) =
        observed.within(|| block_on(call.find_or_lock(&driver, &ItemsLookup::<T>::new())));
    let _lock = lock.map(CacheLockGuard::held);
    if let Some(mut items) = found {
        call.hit();
        observed.end(CallOutcome::Hit);
        let (sender, receiver) = mpsc::channel(IN_FLIGHT);
        if opened.send(Opened::Hit(receiver)).is_err() {
            return;
        }
        loop {
            let next = match items.next_bytes() {
                Ok(Some(bytes)) => Read::Item(bytes.to_vec()),
                Ok(None) => Read::End,
                Err(err) => {
                    call.load_failed(err);
                    crate::common::diag::warning!(
                        "memo: cached items of {} became unreadable; recomputing",
                        call.key.stored()
                    );
                    Read::Failed
                }
            };
            let last = !matches!(next, Read::Item(_));
            // An error means the stream was dropped: stop reading.
            if sender.blocking_send(next).is_err() || last {
                return;
            }
        }
    }
    call.miss();
    observed.end(CallOutcome::Miss);
    // The tokens the items will be stored behind, had before the source
    // starts.
    if !call.will_store() || block_on(call.ensure_tokens(&driver)).is_none() {
        let _ = opened.send(Opened::Miss(None));
        return;
    }
    let (sender, mut receiver) = mpsc::channel(IN_FLIGHT);
    if opened.send(Opened::Miss(Some(sender))).is_err() {
        return;
    }
    let mut writer = call.writer(true);
    // A closed channel without `Finish` is a stream dropped half-way (or a
    // source that panicked): the writer is dropped without its manifest.
    while let Some(message) = receiver.blocking_recv() {
        match message {
            Write::Item(bytes) => writer.write_item(&bytes),
            Write::Finish => {
                call.store_finished(writer.finish(fingerprint::<T>(true)));
                return;
            }
            Write::Unstorable(err) => {
                call.store_finished(Err(err));
                return;
            }
        }
    }
}

/// What one poll of a miss's source came to.
enum MissStep<T> {
    Item(T),
    /// The source ended; the cache side is finishing, if it stores.
    Ended(Option<JoinHandle<()>>),
}

impl Store {
    /// Reserves room for the next item; `Ready(false)` when the cache side
    /// is gone (the store failed), and items are no longer sent.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.permit.is_some() {
            return Poll::Ready(true);
        }
        let sender = &self.sender;
        let reserving = self
            .reserving
            .get_or_insert_with(|| Box::pin(sender.clone().reserve_owned()));
        let reserved = ready!(reserving.as_mut().poll(cx));
        self.reserving = None;
        match reserved {
            Ok(permit) => {
                self.permit = Some(permit);
                Poll::Ready(true)
            }
            Err(_) => Poll::Ready(false),
        }
    }

    fn send(&mut self, message: Write) {
        if let Some(permit) = self.permit.take() {
            permit.send(message);
        }
    }
}

fn poll_miss<T: Serialize>(
    source: &mut Source<T>,
    store: &mut Option<Store>,
    cx: &mut Context<'_>,
) -> Poll<MissStep<T>> {
    if let Some(active) = store {
        if !ready!(active.poll_room(cx)) {
            *store = None;
        }
    }
    match ready!(source.as_mut().poll_next(cx)) {
        Some(item) => {
            if let Some(active) = store {
                match postcard::to_allocvec(&item) {
                    Ok(bytes) => active.send(Write::Item(bytes)),
                    Err(err) => {
                        active.send(Write::Unstorable(StoreError::Encode(err.into())));
                        *store = None;
                    }
                }
            }
            Poll::Ready(MissStep::Item(item))
        }
        None => Poll::Ready(MissStep::Ended(store.take().map(|mut active| {
            active.send(Write::Finish);
            active.job
        }))),
    }
}

impl<T> Stream for MemoStream<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Start { .. } => {
                    let State::Start { key, options } =
                        std::mem::replace(&mut this.state, State::Done)
                    else {
                        unreachable!("matched Start above")
                    };
                    this.start(key, options);
                }
                State::Opening { opened, job } => {
                    let opened = ready!(Pin::new(opened).poll(cx));
                    let job = job.take();
                    this.state = match (opened, job) {
                        (Ok(Opened::Hit(items)), _) => State::Hit { items, yielded: 0 },
                        (Ok(Opened::Miss(sender)), job) => {
                            let store = sender.zip(job).map(|(sender, job)| Store {
                                sender,
                                reserving: None,
                                permit: None,
                                job,
                            });
                            let source = this.compute();
                            State::Miss { source, store }
                        }
                        // The cache side is gone (it panicked): no cache.
                        (Err(_), _) => {
                            let source = this.compute();
                            State::Fallback { source, skip: 0 }
                        }
                    };
                }
                State::Hit { items, yielded } => {
                    let decoded = match ready!(items.poll_recv(cx)) {
                        Some(Read::Item(bytes)) => envelope::decode_exact::<T>(&bytes).ok(),
                        Some(Read::End) => {
                            this.state = State::Done;
                            return Poll::Ready(None);
                        }
                        Some(Read::Failed) | None => None,
                    };
                    if let Some(item) = decoded {
                        *yielded += 1;
                        return Poll::Ready(Some(item));
                    }
                    let skip = *yielded;
                    let source = this.compute();
                    this.state = State::Fallback { source, skip };
                }
                State::Miss { source, store } => match ready!(poll_miss(source, store, cx)) {
                    MissStep::Item(item) => return Poll::Ready(Some(item)),
                    MissStep::Ended(Some(job)) => this.state = State::Finishing(job),
                    MissStep::Ended(None) => {
                        this.state = State::Done;
                        return Poll::Ready(None);
                    }
                },
                State::Fallback { source, skip } => match ready!(source.as_mut().poll_next(cx)) {
                    Some(_) if *skip > 0 => *skip -= 1,
                    Some(item) => return Poll::Ready(Some(item)),
                    None => {
                        this.state = State::Done;
                        return Poll::Ready(None);
                    }
                },
                State::Finishing(job) => {
                    // A job that panicked stored nothing; either way the
                    // stream is over.
                    let _ = ready!(Pin::new(job).poll(cx));
                    this.state = State::Done;
                    return Poll::Ready(None);
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }
}

/// A source that ends at once.
struct Empty<T>(std::marker::PhantomData<fn() -> T>);

impl<T> Stream for Empty<T> {
    type Item = T;
    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
        Poll::Ready(None)
    }
}

impl<T> std::fmt::Debug for MemoStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Start { .. } => "not started",
            State::Opening { .. } => "looking up",
            State::Hit { .. } => "reading from the cache",
            State::Miss { .. } => "computing and storing",
            State::Fallback { .. } => "recomputing",
            State::Finishing(_) => "storing",
            State::Done => "done",
        };
        f.debug_struct("MemoStream").field("state", &state).finish()
    }
}
