//! The errors every layer shares: a backend's failure (with its kind), a
//! configuration that cannot be used, and an encryption key of the wrong
//! length. They sit below every layer that reports them.

use std::fmt;

/// A configuration that is wrong: an unknown URL scheme, a malformed value,
/// an encryption key of the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL could not be parsed at all.
    #[error("invalid cache URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL names a scheme memo does not know, or one whose cargo feature
    /// is off.
    #[error(
        "unsupported cache URL scheme {scheme:?}: use memory://, memcached:// (feature \"memcached\"), redis:// (feature \"redis\"), or memcacheds:// or rediss:// (feature \"tls\" too)"
    )]
    UnsupportedScheme {
        /// The scheme as given.
        scheme: String,
    },
    /// The scheme is known but its cargo feature is not enabled.
    #[error("cache URL scheme {scheme:?} needs memo-runtime's cargo feature {feature:?}")]
    FeatureDisabled {
        /// The scheme as given.
        scheme: String,
        /// The feature to enable.
        feature: &'static str,
    },
    /// A setting (URL parameter or environment variable) has a value that
    /// cannot be used.
    #[error("invalid value {value:?} for {name}: {reason}")]
    InvalidValue {
        /// The parameter or variable name.
        name: String,
        /// The value as given.
        value: String,
        /// What is expected instead.
        reason: String,
    },
    /// A URL parameter memo does not know.
    #[error("unknown cache URL parameter {name:?} (known: {known})")]
    UnknownParameter {
        /// The parameter as given.
        name: String,
        /// The parameters the scheme accepts.
        known: String,
    },
    /// An encryption key of the wrong length.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The backend could not be set up from the URL.
    #[error("cannot set up the cache backend: {0}")]
    Backend(String),
}

/// An encryption key of the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an AES encryption key must be 16, 24 or 32 bytes long, not {0}")]
pub struct KeyError(pub usize);

/// A failure reported by a backend: the server is down, timed out, refused a
/// value, or answered something the client could not parse.
///
/// memo never hands this to the caller of a memoized function: it logs it,
/// counts it in [`stats`](crate::stats()), and computes the value instead.
#[derive(Debug)]
pub struct BackendError {
    kind: BackendErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl BackendError {
    /// A new error with a message saying what went wrong, of kind
    /// [`BackendErrorKind::Other`] until [`with_kind`](Self::with_kind)
    /// says more.
    ///
    /// ```
    /// use memo_runtime::BackendError;
    /// let err = BackendError::new("connection refused by cache-1:11211");
    /// assert_eq!(err.to_string(), "connection refused by cache-1:11211");
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        BackendError {
            kind: BackendErrorKind::Other,
            message: message.into(),
            source: None,
        }
    }

    /// A new error that wraps the client library's own error as its source.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BackendError {
            kind: BackendErrorKind::Other,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The same error, of `kind`: what a custom backend sets so that memo's
    /// logs and [`Stats`](crate::Stats) tell timeouts and outages apart.
    ///
    /// ```
    /// use memo_runtime::{BackendError, BackendErrorKind};
    /// let err = BackendError::new("cache-1 did not answer").with_kind(BackendErrorKind::Timeout);
    /// assert!(err.is_timeout());
    /// ```
    #[must_use]
    pub fn with_kind(mut self, kind: BackendErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// The message, without the source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> BackendErrorKind {
        self.kind
    }

    /// Whether the server did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == BackendErrorKind::Timeout
    }

    /// Whether the server could not be reached or the connection broke
    /// (including a server skipped during its back-off after such failures).
    pub fn is_connection(&self) -> bool {
        self.kind == BackendErrorKind::Connection
    }

    /// Whether the server answered something the client could not follow.
    pub fn is_protocol(&self) -> bool {
        self.kind == BackendErrorKind::Protocol
    }

    /// Whether the server answered with an error (a refused value, an error
    /// reply): it is up, but would not do this.
    pub fn is_server_error(&self) -> bool {
        self.kind == BackendErrorKind::Server
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// What kind of failure a [`BackendError`] is, so that callers can decide
/// without parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// A deadline passed: the server did not connect or answer in time.
    Timeout,
    /// The server could not be reached or the connection broke (refused,
    /// reset, closed, a name that does not resolve), or the server is being
    /// skipped during its back-off after such a failure.
    Connection,
    /// The server answered something the client could not follow.
    Protocol,
    /// The server answered with an error: it is up, but refused the request.
    Server,
    /// Anything else, such as a key the backend cannot store, and errors of
    /// custom backends that name no kind.
    Other,
}

impl BackendErrorKind {
    /// The kind as the `kind` label of `memo_backend_errors_total` and the
    /// `kind` field of a failure's `tracing` event spell it.
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    pub(crate) fn label(self) -> &'static str {
        match self {
            BackendErrorKind::Timeout => "timeout",
            BackendErrorKind::Connection => "connection",
            BackendErrorKind::Protocol => "protocol",
            BackendErrorKind::Server => "server",
            BackendErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for BackendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendErrorKind::Timeout => "timeout",
            BackendErrorKind::Connection => "connection",
            BackendErrorKind::Protocol => "protocol",
            BackendErrorKind::Server => "server error",
            BackendErrorKind::Other => "other",
        })
    }
}
