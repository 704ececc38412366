//! The errors of setting memo up: a configuration that cannot be used, and
//! an encryption key of the wrong length. They sit below every layer that
//! reports them (URL parsing, backends, configuration, keys).

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
        "unsupported cache URL scheme {scheme:?}: use memory://, memcached:// (feature \"memcached\") or redis:// (feature \"redis\")"
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
