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
/// userinfo, and the values of its password parameters, replaced by
/// `***`, and `Debug` prints them the same way, since both end up in
/// error messages and logs.
///
/// Each piece is cut out of the URL at its delimiters first and
/// percent-decoded after, so an escaped delimiter stays part of its piece:
/// `%3A` in a user name, `%40` in a password or `%2C` in a host name is
/// that character, never a separator.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheUrl {
    /// The URL as given, with any credentials replaced by `***`: safe for
    /// error messages and logs.
    pub url: String,
    /// The scheme, lower-cased (`memory`, `memcached`, `redis`).
    pub scheme: String,
    /// The user name of the userinfo (`user` of `user:password@`),
    /// percent-decoded; `Some("")` for `:password@`, `None` without an `@`.
    pub username: Option<String>,
    /// The password of the userinfo (after its first `:`), percent-decoded;
    /// `None` without one.
    pub password: Option<String>,
    /// The comma-separated hosts, each `host:port`, `host` or `[v6]:port`,
    /// its host name percent-decoded.
    pub hosts: Vec<String>,
    /// The path after the hosts, without the leading `/` (Redis' database).
    pub path: String,
    /// The query parameters, percent-decoded, in order (those holding a
    /// secret, such as `sentinel_password`, shown as `***` by `Debug`).
    pub params: Vec<(String, String)>,
}

impl fmt::Debug for CacheUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheUrl")
            .field("url", &self.url)
            .field("scheme", &self.scheme)
            .field("username", &self.username.as_ref().map(|_| REDACTED))
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("hosts", &self.hosts)
            .field("path", &self.path)
            .field(
                "params",
                &self
                    .params
                    .iter()
                    .map(|(name, value)| {
                        (
                            name.as_str(),
                            if is_secret(name) {
                                REDACTED
                            } else {
                                value.as_str()
                            },
                        )
                    })
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What stands in for credentials wherever a URL is shown.
const REDACTED: &str = "***";

/// `url` with its userinfo (everything up to the last `@` ahead of the
/// query) replaced by [`REDACTED`]. It reaches past the first `/` on
/// purpose: a password with an unescaped `/` does not parse, and the error
/// saying so must not print it either.
///
/// The value of every query parameter that holds a secret
/// ([`is_secret`], e.g. `sentinel_password`) is replaced the same way.
pub(crate) fn redact(url: &str) -> String {
    // Without a scheme there is no telling where credentials begin: hide
    // everything up to the `@`.
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let query = rest.find('?').unwrap_or(rest.len());
    let (authority, query) = rest.split_at(query);
    let authority = match authority.rfind('@') {
        Some(at) => format!("{REDACTED}{}", &authority[at..]),
        None => authority.to_owned(),
    };
    let query = match query.strip_prefix('?') {
        Some(pairs) => {
            let pairs: Vec<String> = pairs
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if is_secret(name) => format!("{name}={REDACTED}"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("?{}", pairs.join("&"))
        }
        None => String::new(),
    };
    format!("{}{authority}{query}", &url[..start])
}

/// Whether the query parameter `name` holds a secret, to be shown as
/// [`REDACTED`]: any whose name ends in `password`, any case.
pub(crate) fn is_secret(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with("password")
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
        let (username, password, after_userinfo) = match before_query.rsplit_once('@') {
            Some((userinfo, rest)) => {
                // Split before decoding: an escaped `:` belongs to the user
                // name. The credentials' own text must not reach the error.
                let decode = |text: &str| {
                    decode_component(text).ok_or_else(|| {
                        invalid("bad percent escape or non-UTF-8 text in the credentials")
                    })
                };
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (userinfo, None),
                };
                (Some(decode(user)?), password.map(decode).transpose()?, rest)
            }
            None => (None, None, before_query),
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
                        decode_host(host).map_err(|reason| invalid(&reason))
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
            username,
            password,
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

/// `host`, one entry of the host list, with its host name percent-decoded:
/// the port is split off first, so an escaped `:` cannot make one, and a
/// decoded name holding a character no host name has (a delimiter of the
/// URL, a space) is refused rather than misread later.
fn decode_host(host: &str) -> Result<String, String> {
    let (name, port, bracketed) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((name, port)) => (name, port, true),
            // Malformed as an address: the backend says how.
            None => return Ok(host.to_owned()),
        },
        None => match host.rsplit_once(':') {
            Some((name, _)) if !name.contains(':') => (name, &host[name.len()..], false),
            _ => (host, "", false),
        },
    };
    let decoded = decode_component(name)
        .ok_or_else(|| format!("{host:?}: bad percent escape or non-UTF-8 text in the host"))?;
    // A literal `:` is an IPv6 address without brackets, which the
    // backends refuse with their own advice; a decoded one never parses.
    let forbidden = |c: char| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, ',' | '@' | '/' | '?' | '#' | '[' | ']')
            || (c == ':' && !bracketed && !name.contains(':'))
    };
    if let Some(bad) = decoded.chars().find(|&c| forbidden(c)) {
        return Err(format!(
            "{host:?}: a host name cannot contain {bad:?} (decoded from the URL)"
        ));
    }
    Ok(if bracketed {
        format!("[{decoded}]{port}")
    } else {
        format!("{decoded}{port}")
    })
}

/// `text` percent-decoded as a piece of a URL's authority (a user name, a
/// password, a host name): `%XX` is a byte, and `+` is itself (only a
/// query writes a space as `+`). `None` on a bad escape or non-UTF-8.
fn decode_component(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A query parameter's name or value, percent-decoded, `+` standing for a
/// space as in a form.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> CacheUrl {
        CacheUrl::parse(url).unwrap_or_else(|err| panic!("{url}: {err}"))
    }

    #[test]
    fn escaped_delimiters_in_credentials_stay_in_their_piece() {
        let url = parse("redis://us%3Aer%40x%2Cy:pa%3As%40s%2Cw@h:1");
        assert_eq!(url.username.as_deref(), Some("us:er@x,y"));
        assert_eq!(url.password.as_deref(), Some("pa:s@s,w"));
        assert_eq!(url.hosts, ["h:1"]);
        // Only the first literal `:` splits; later ones are the password's.
        let url = parse("redis://u%3A:p:q@h");
        assert_eq!(url.username.as_deref(), Some("u:"));
        assert_eq!(url.password.as_deref(), Some("p:q"));
        let url = parse("redis://:%3A@h");
        assert_eq!(url.username.as_deref(), Some(""));
        assert_eq!(url.password.as_deref(), Some(":"));
        let url = parse("redis://only%3Auser@h");
        assert_eq!(url.username.as_deref(), Some("only:user"));
        assert_eq!(url.password, None);
        let url = parse("redis://h:1");
        assert_eq!((url.username, url.password), (None, None));
        // `+` is a space only in a query.
        let url = parse("redis://a+b:c+d@h?namespace=e+f");
        assert_eq!(url.username.as_deref(), Some("a+b"));
        assert_eq!(url.password.as_deref(), Some("c+d"));
        assert_eq!(url.params, [("namespace".to_owned(), "e f".to_owned())]);
    }

    #[test]
    fn escaped_delimiters_in_hosts_are_one_host_and_refused_by_name() {
        // Split at `,` before decoding: one host, not two.
        for (url, bad) in [
            ("redis://a%2Cb:1", "','"),
            ("redis+cluster://a:1,b%2Cc:2", "','"),
            ("redis://a%40b:1", "'@'"),
            ("redis://u:p@a%40b:1", "'@'"),
            ("redis://a%3A1", "':'"),
            ("redis://a%3A1:6379", "':'"),
            ("redis://a%2Fb:1", "'/'"),
            ("redis://a%20b:1", "' '"),
        ] {
            let err = CacheUrl::parse(url).unwrap_err().to_string();
            assert!(
                err.contains("cannot contain") && err.contains(bad),
                "{url}: {err}"
            );
        }
        // Escapes that make a valid name decode; brackets keep a v6 `:`.
        let url = parse("redis://c%61che:1,[::1]:2,[%3A%3A1]:3,x");
        assert_eq!(url.hosts, ["cache:1", "[::1]:2", "[::1]:3", "x"]);
        // An escaped bracket is no bracket.
        assert!(CacheUrl::parse("redis://%5B::1%5D:2").is_err());
        assert!(CacheUrl::parse("redis://a%zz:1").is_err());
        assert!(CacheUrl::parse("redis://a%+1:1").is_err());
    }

    #[test]
    fn credentials_with_escapes_stay_hidden() {
        let url = parse("redis://zor%3Aro:s3%40cret@h:1");
        assert_eq!(url.url, "redis://***@h:1");
        let shown = format!("{url:?}");
        assert!(!shown.contains("zor") && !shown.contains("s3"), "{shown}");
        let url =
            parse("redis+sentinel://h/svc?sentinel_password=s3cret&db=2&Sentinel_Password=s3");
        assert_eq!(
            url.url,
            "redis+sentinel://h/svc?sentinel_password=***&db=2&Sentinel_Password=***"
        );
        assert!(!format!("{url:?}").contains("s3"), "{url:?}");
        assert_eq!(url.params[0].1, "s3cret", "the value itself is kept");
        for bad in ["redis://zor%zzro:s3cret@h", "redis://zorro:s3%zzcret@h"] {
            let err = CacheUrl::parse(bad).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("zor") && !shown.contains("s3"), "{shown}");
        }
    }
}
