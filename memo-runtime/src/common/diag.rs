//! memo's diagnostic lines, written once for both facades: with feature
//! `tracing` they are `tracing` events, inside the span of the call that
//! raised them; without it they are `log` records, as they always were, so
//! users without the feature keep their logs. Every module writes its
//! lines through these macros rather than `log::warn!` and friends
//! (`warning!` because `warn` is a built-in attribute's name).

// Not every build uses every level (`error!` only the async world's).
#![allow(unused_macros, unused_imports)]

/// A `error` line, through `tracing` or `log` (see the module docs).
macro_rules! error {
    ($($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        ::tracing::error!($($arg)+);
        #[cfg(not(feature = "tracing"))]
        ::log::error!($($arg)+);
    }};
}
pub(crate) use error;

/// A `warn` line, through `tracing` or `log` (see the module docs).
macro_rules! warning {
    ($($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        ::tracing::warn!($($arg)+);
        #[cfg(not(feature = "tracing"))]
        ::log::warn!($($arg)+);
    }};
}
pub(crate) use warning;

/// A `info` line, through `tracing` or `log` (see the module docs).
macro_rules! info {
    ($($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        ::tracing::info!($($arg)+);
        #[cfg(not(feature = "tracing"))]
        ::log::info!($($arg)+);
    }};
}
pub(crate) use info;

/// A `debug` line, through `tracing` or `log` (see the module docs).
macro_rules! debug {
    ($($arg:tt)+) => {{
        #[cfg(feature = "tracing")]
        ::tracing::debug!($($arg)+);
        #[cfg(not(feature = "tracing"))]
        ::log::debug!($($arg)+);
    }};
}
pub(crate) use debug;
