//! A cache URL taken apart, with its credentials kept out of every message.
//!
//! The configuration layer reads the general settings from it and hands the
//! rest to the backend its scheme names; the backends read their hosts and
//! parameters from it. It depends on nothing above it.

use std::fmt;

use super::error::ConfigError;

/// The parameters every scheme takes; [`Config::from_url`](crate::Config::from_url)
/// applies them, and a backend sees only the rest.
pub(crate) const GENERAL_PARAMS: &[&str] = &[
    "namespace",
    "expiration",
    "chunk_size",
    "compression_level",
    "force_encryption",
];

/// A cache URL taken apart: `scheme://[user:pass@]host:port[,host:port...][/path][?a=b&c=d]`.
///
/// Backends receive this from [`Config::from_url`](crate::Config::from_url) with the general
/// parameters (namespace, expiration, ...) already taken out, so whatever
/// is left in `params` is theirs to accept or reject.
///
/// Credentials never leave it by accident: `url` holds the URL with its
/// userinfo replaced by `***`, and `Debug` prints the userinfo the same way,
/// since both end up in error messages and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheUrl {
    /// The URL as given, with any credentials replaced by `***`: safe for
    /// error messages and logs.
    pub url: String,
    /// The scheme, lower-cased (`memory`, `memcached`, `redis`).
    pub scheme: String,
    /// `user:password` before an `@`, if any.
    pub userinfo: Option<String>,
    /// The comma-separated hosts, each as written (`host:port`, `[::1]:port`).
    pub hosts: Vec<String>,
    /// The path after the hosts, without the leading `/` (Redis' database).
    pub path: String,
    /// The query parameters, percent-decoded, in order.
    pub params: Vec<(String, String)>,
}

impl fmt::Debug for CacheUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheUrl")
            .field("url", &self.url)
            .field("scheme", &self.scheme)
            .field("userinfo", &self.userinfo.as_ref().map(|_| REDACTED))
            .field("hosts", &self.hosts)
            .field("path", &self.path)
            .field("params", &self.params)
            .finish()
    }
}

/// What stands in for credentials wherever a URL is shown.
const REDACTED: &str = "***";

/// `url` with its userinfo (everything up to the last `@` ahead of the
/// query) replaced by [`REDACTED`]. It reaches past the first `/` on
/// purpose: a password with an unescaped `/` does not parse, and the error
/// saying so must not print it either.
pub(crate) fn redact(url: &str) -> String {
    // Without a scheme there is no telling where credentials begin: hide
    // everything up to the `@`.
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let query = rest.find('?').unwrap_or(rest.len());
    match rest[..query].rfind('@') {
        Some(at) => format!("{}{REDACTED}{}", &url[..start], &rest[at..]),
        None => url.to_owned(),
    }
}

impl CacheUrl {
    /// Takes `url` apart.
    ///
    /// ```
    /// use memo_runtime::CacheUrl;
    ///
    /// let url = CacheUrl::parse("redis://:s3cret@cache:6379/2").unwrap();
    /// assert_eq!(url.url, "redis://***@cache:6379/2");
    /// assert!(!format!("{url:?}").contains("s3cret"));
    /// ```
    pub fn parse(url: &str) -> Result<CacheUrl, ConfigError> {
        let redacted = redact(url);
        let invalid = |reason: &str| ConfigError::InvalidUrl {
            url: redacted.clone(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected scheme://..., e.g. memcached://127.0.0.1:11211"))?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
        {
            return Err(invalid("the scheme is empty or has invalid characters"));
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((before, query)) => (before, Some(query)),
            None => (rest, None),
        };
        // The last `@` ends the credentials even when they hold an unescaped
        // `/`, the same rule `redact` follows, so hosts never hold a secret.
        let (userinfo, after_userinfo) = match before_query.rsplit_once('@') {
            Some((userinfo, rest)) => (
                // The credentials' own text must not reach the error.
                Some(percent_decode(userinfo, &redacted).map_err(|_| {
                    invalid("bad percent escape or non-UTF-8 text in the credentials")
                })?),
                rest,
            ),
            None => (None, before_query),
        };
        let (hosts, path) = match after_userinfo.split_once('/') {
            Some((hosts, path)) => (hosts, path),
            None => (after_userinfo, ""),
        };
        let hosts = if hosts.is_empty() {
            Vec::new()
        } else {
            hosts
                .split(',')
                .map(|host| {
                    let host = host.trim();
                    if host.is_empty() {
                        Err(invalid("empty host in the host list"))
                    } else {
                        Ok(host.to_owned())
                    }
                })
                .collect::<Result<_, _>>()?
        };
        let mut params = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            params.push((
                percent_decode(name, &redacted)?,
                percent_decode(value, &redacted)?,
            ));
        }
        Ok(CacheUrl {
            url: redacted.clone(),
            scheme: scheme.to_ascii_lowercase(),
            userinfo,
            hosts,
            path: path.to_owned(),
            params,
        })
    }

    /// The error for a parameter the backend does not know.
    pub(crate) fn unknown_parameter(&self, name: &str, known: &[&str]) -> ConfigError {
        let mut all: Vec<&str> = GENERAL_PARAMS.to_vec();
        all.extend_from_slice(known);
        ConfigError::UnknownParameter {
            name: name.to_owned(),
            known: all.join(", "),
        }
    }

    /// The error for a parameter with a value that cannot be used.
    pub(crate) fn invalid_value(&self, name: &str, value: &str, reason: &str) -> ConfigError {
        ConfigError::InvalidValue {
            name: name.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        }
    }

    /// A parameter holding a duration in milliseconds.
    #[cfg(any(feature = "memcached", feature = "redis"))]
    pub(crate) fn millis(
        &self,
        name: &str,
        value: &str,
    ) -> Result<std::time::Duration, ConfigError> {
        value
            .parse()
            .map(std::time::Duration::from_millis)
            .map_err(|_| self.invalid_value(name, value, "expected a whole number of milliseconds"))
    }
}

/// Parses `1/true/yes/on` and `0/false/no/off`, any case.
pub(crate) fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn percent_decode(text: &str, url: &str) -> Result<String, ConfigError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| ConfigError::InvalidUrl {
                        url: url.to_owned(),
                        reason: format!("bad percent escape in {text:?}"),
                    })?;
                out.push(byte);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ConfigError::InvalidUrl {
        url: url.to_owned(),
        reason: format!("{text:?} does not decode to UTF-8"),
    })
}
