//! The HTTP vocabulary between the core and a driver: requests the core asks
//! for and the response heads a driver reports back.
//!
//! Drivers hand every response header to [`ResponseHead::header`]; the core
//! picks out what it needs (length, range, redirect target, GitHub's
//! rate-limit headers, `Retry-After`, `Date`) so that no driver interprets
//! HTTP semantics on its own.

use crate::release::Url;
use heapless::String;

/// An entity tag as the core keeps it (Azure's and S3's are 20 to 40 bytes; a longer one
/// is not kept, and the resume goes without `If-Range`).
pub type Validator = String<116>;
use crate::trace::Purpose;

/// How a request failed below HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The server could not be reached or stopped answering: DNS, connect, reset, timeout.
    /// The network's doing, not the image's.
    Network,
    /// The server was reached but the TLS handshake failed (certificate, protocol): the
    /// image's roots, clock or TLS stack.
    Tls,
    /// The board's own network stack could not start (WiFi driver, TLS context): the image's.
    Board,
}

/// What the response should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// `application/vnd.github+json`
    Json,
    /// `application/octet-stream` (asset bytes)
    OctetStream,
}

impl Accept {
    /// The `Accept` header value.
    pub fn header_value(self) -> &'static str {
        match self {
            Accept::Json => "application/vnd.github+json",
            Accept::OctetStream => "application/octet-stream",
        }
    }
}

/// A GET the driver must perform, without following redirects itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// Id the driver passes back with every response callback.
    pub id: u32,
    /// What the request is for (drivers may log it).
    pub purpose: Purpose,
    /// Absolute URL.
    pub url: Url,
    /// `Range: bytes={from}-` when set.
    pub range_from: Option<u32>,
    /// `If-Range: {validator}` when set (only with `range_from`): a server whose file no
    /// longer has this ETag answers 200 with all of it.
    pub if_range: Option<Validator>,
    /// `If-None-Match: {etag}` when set: the release answer the board already acted on;
    /// GitHub answers 304 without a body when it has not changed.
    pub if_none_match: Option<Validator>,
    /// `Accept` header.
    pub accept: Accept,
    /// Send `Authorization: Bearer <token>` (only ever for the API host).
    pub authorize: bool,
}

/// The parts of a response head the core acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHead {
    /// HTTP status.
    pub status: u16,
    /// `Content-Length`.
    pub content_length: Option<u32>,
    /// First byte of `Content-Range: bytes a-b/n`.
    pub range_start: Option<u32>,
    /// Total length `n` of `Content-Range: bytes a-b/n` (or `bytes */n` on a 416).
    pub range_total: Option<u32>,
    /// `ETag`, weak (`W/"…"`) or strong, when it fits a [`Validator`].
    pub etag: Option<Validator>,
    /// `Location`.
    pub location: Option<Url>,
    /// `Retry-After` in seconds.
    pub retry_after_s: Option<u32>,
    /// `x-ratelimit-remaining`.
    pub ratelimit_remaining: Option<u32>,
    /// `x-ratelimit-reset` (Unix seconds).
    pub ratelimit_reset: Option<u64>,
    /// `Date` (Unix seconds).
    pub date: Option<u64>,
    /// `Location` was longer than the core keeps.
    pub location_too_long: bool,
}

impl ResponseHead {
    /// A head with this status and no headers yet.
    pub fn new(status: u16) -> Self {
        ResponseHead {
            status,
            ..Default::default()
        }
    }

    /// Records one header (names are case-insensitive; unknown ones are ignored).
    pub fn header(&mut self, name: &str, value: &str) {
        let value = value.trim();
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("content-length") {
            self.content_length = value.parse().ok();
        } else if is("content-range") {
            let range = value.strip_prefix("bytes ");
            self.range_start = range
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse().ok());
            self.range_total = range
                .and_then(|r| r.rsplit('/').next())
                .and_then(|s| s.parse().ok());
        } else if is("etag") {
            let mut etag = Validator::new();
            self.etag = etag.push_str(value).is_ok().then_some(etag);
        } else if is("location") {
            let mut url = Url::new();
            self.location_too_long = url.push_str(value).is_err();
            self.location = (!self.location_too_long).then_some(url);
        } else if is("retry-after") {
            self.retry_after_s = value.parse().ok();
        } else if is("x-ratelimit-remaining") {
            self.ratelimit_remaining = value.parse().ok();
        } else if is("x-ratelimit-reset") {
            self.ratelimit_reset = value.parse().ok();
        } else if is("date") {
            self.date = parse_http_date(value);
        }
    }

    /// The `ETag` when it is strong: only a strong tag may go in `If-Range`
    /// (RFC 9110 §13.1.5); GitHub's API answers carry weak ones, its asset hosts strong ones.
    pub fn strong_etag(&self) -> Option<&Validator> {
        self.etag.as_ref().filter(|e| !e.starts_with("W/"))
    }

    /// How long GitHub asks us to wait, when this response is a rate limit.
    pub fn rate_limit_wait_ms(&self) -> Option<u64> {
        if !matches!(self.status, 403 | 429) {
            return None;
        }
        if let Some(s) = self.retry_after_s {
            return Some(u64::from(s) * 1000);
        }
        if self.ratelimit_remaining == Some(0) {
            return Some(match (self.ratelimit_reset, self.date) {
                (Some(reset), Some(date)) => reset
                    .saturating_sub(date)
                    .saturating_add(1)
                    .saturating_mul(1000),
                // Without a server clock, wait a minute and ask again.
                _ => 60_000,
            });
        }
        None
    }
}

/// `scheme://host[:port]` of an absolute URL, lower-cased comparison left to the caller.
pub fn origin(url: &str) -> Option<&str> {
    let scheme_end = url.find("://")?;
    let rest = &url[scheme_end + 3..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    (authority_len > 0).then(|| &url[..scheme_end + 3 + authority_len])
}

/// Whether two absolute URLs have the same scheme, host and port (where a token may go).
pub fn same_origin(a: &str, b: &str) -> bool {
    match (origin(a), origin(b)) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

/// Whether the URL's host is this machine: `localhost`, `127.0.0.0/8` or `[::1]`.
pub fn is_loopback(url: &str) -> bool {
    let Some(origin) = origin(url) else {
        return false;
    };
    let authority = origin.rsplit("://").next().unwrap_or("");
    // Credentials before `@` are not the host.
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let host = if host_port.starts_with('[') {
        host_port.split(']').next().map_or("", |h| &h[1..])
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host == "::1"
        || (host.starts_with("127.")
            && host.split('.').count() == 4
            && host.split('.').all(|p| p.parse::<u8>().is_ok()))
}

/// Whether following a redirect from `from` to `to` downgrades https to plain http.
pub fn is_downgrade(from: &str, to: &str) -> bool {
    from.get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        && !to
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) to Unix seconds.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let mut it = s.split_ascii_whitespace();
    let _weekday = it.next()?;
    let day: u64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    // Four digits, as IMF-fixdate has them: a hostile year cannot overflow the day count.
    let year: i64 = it.next()?.parse().ok().filter(|y| (1..=9999).contains(y))?;
    let mut hms = it.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if it.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    // At most 3,000,000 days after 1970 and one day in seconds: far inside u64.
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Thu, 26 Nov 2026 23:45:00 GMT"),
            Some(1_795_736_700)
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn githubs_rate_limit_headers_give_the_wait() {
        let mut h = ResponseHead::new(403);
        h.header("X-RateLimit-Remaining", "0");
        h.header("x-ratelimit-reset", "1000");
        h.header("Date", "Thu, 01 Jan 1970 00:15:40 GMT"); // 940 s
        assert_eq!(h.rate_limit_wait_ms(), Some(61_000));
        let mut h = ResponseHead::new(429);
        h.header("retry-after", "7");
        assert_eq!(h.rate_limit_wait_ms(), Some(7_000));
        assert_eq!(ResponseHead::new(403).rate_limit_wait_ms(), None);
        assert_eq!(ResponseHead::new(500).rate_limit_wait_ms(), None);
    }

    /// A hostile server must not be able to panic the core (debug builds check overflow).
    #[test]
    fn hostile_rate_limit_headers_and_dates_do_not_overflow() {
        let mut h = ResponseHead::new(403);
        h.header("x-ratelimit-remaining", "0");
        h.header("x-ratelimit-reset", "18446744073709551615");
        h.header("date", "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(h.rate_limit_wait_ms(), Some(u64::MAX));
        assert_eq!(
            parse_http_date("Sun, 06 Nov 9223372036854775807 08:49:37 GMT"),
            None
        );
        assert_eq!(
            parse_http_date("Sun, 06 Nov -9223372036854775808 08:49:37 GMT"),
            None
        );
        assert_eq!(
            parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(253_402_300_799)
        );
        let mut h = ResponseHead::new(429);
        h.header("retry-after", "4294967295");
        assert_eq!(h.rate_limit_wait_ms(), Some(4_294_967_295_000));
    }

    proptest::proptest! {
        /// Any header value, for any header the core reads, is taken or ignored: never a panic.
        #[test]
        fn any_header_value_is_safe(name in proptest::sample::select(std::vec![
            "content-length", "content-range", "location", "retry-after", "x-ratelimit-remaining",
            "x-ratelimit-reset", "date", "etag",
        ]), value in "\\PC{0,64}", status in 0u16..1000) {
            let mut h = ResponseHead::new(status);
            h.header(name, &value);
            h.header("x-ratelimit-remaining", "0");
            let _ = h.rate_limit_wait_ms();
        }

        /// Dates with any numbers in them parse or are refused, never overflow.
        #[test]
        fn any_date_numbers_are_safe(day in proptest::num::i64::ANY, year in proptest::num::i64::ANY,
                                     h in proptest::num::u64::ANY, m in proptest::num::u64::ANY) {
            let _ = parse_http_date(&std::format!("Sun, {day} Nov {year} {h}:{m}:00 GMT"));
        }
    }

    #[test]
    fn origins_decide_where_a_token_may_go() {
        assert!(same_origin(
            "https://api.github.com/repos/a/b/releases/assets/1",
            "https://API.github.com"
        ));
        assert!(!same_origin(
            "https://api.github.com.evil.example/x",
            "https://api.github.com"
        ));
        assert!(!same_origin(
            "http://api.github.com/x",
            "https://api.github.com"
        ));
        assert!(!same_origin(
            "https://api.github.com:444/x",
            "https://api.github.com"
        ));
        assert!(!same_origin("not a url", "https://api.github.com"));
        assert!(is_loopback("http://127.0.0.1:8080/api"));
        assert!(is_loopback("http://user@localhost"));
        assert!(is_loopback("http://[::1]:1/"));
        assert!(!is_loopback("http://127.0.0.1.evil.example/"));
        assert!(!is_loopback("http://10.0.0.1/"));
        assert!(is_downgrade("https://a/x", "http://b/y"));
        assert!(!is_downgrade("https://a/x", "HTTPS://b/y"));
        assert!(!is_downgrade("http://a/x", "http://b/y"));
    }

    #[test]
    fn content_range_gives_the_first_byte() {
        let mut h = ResponseHead::new(206);
        h.header("Content-Range", "bytes 4096-8191/8192");
        assert_eq!((h.range_start, h.range_total), (Some(4096), Some(8192)));
        let mut h = ResponseHead::new(416);
        h.header("content-range", "bytes */8192");
        assert_eq!((h.range_start, h.range_total), (None, Some(8192)));
        h.header("ETag", "\"0x8DD0A1B2C3D4E5F\"");
        assert_eq!(h.etag.as_deref(), Some("\"0x8DD0A1B2C3D4E5F\""));
        assert_eq!(h.strong_etag(), h.etag.as_ref());
        h.header("ETag", "W/\"weak\"");
        assert_eq!(h.etag.as_deref(), Some("W/\"weak\""));
        assert_eq!(h.strong_etag(), None, "a weak tag never goes in If-Range");
    }

    #[test]
    fn accept_headers_are_githubs() {
        // The API asset URL answers JSON unless asked for octet-stream.
        assert_eq!(
            Accept::OctetStream.header_value(),
            "application/octet-stream"
        );
        assert_eq!(Accept::Json.header_value(), "application/vnd.github+json");
    }

    #[test]
    fn an_origin_needs_a_host() {
        assert_eq!(origin("https:///path"), None);
        assert_eq!(origin("https://h"), Some("https://h"));
        assert_eq!(origin("https://h:1/x?y"), Some("https://h:1"));
    }

    #[test]
    fn every_month_and_every_field_bound_of_a_date() {
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let mut last = 0;
        for m in months {
            let t = parse_http_date(&std::format!("Mon, 01 {m} 2026 00:00:00 GMT")).unwrap();
            assert!(t > last, "{m}");
            last = t;
        }
        assert_eq!(
            parse_http_date("Sun, 01 Feb 2026 00:00:00 GMT"),
            Some(1_769_904_000)
        );
        for bad in [
            "Mon, 00 Jan 2026 00:00:00 GMT",
            "Mon, 32 Jan 2026 00:00:00 GMT",
            "Mon, 01 Jan 2026 24:00:00 GMT",
            "Mon, 01 Jan 2026 00:60:00 GMT",
            "Mon, 01 Jan 2026 00:00:61 GMT",
            "Mon, 01 Jan 2026 00:00:00 UTC",
            "Mon, 01 Foo 2026 00:00:00 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
        for good in [
            "Mon, 31 Jan 2026 23:59:60 GMT",
            "Mon, 01 Jan 2026 23:59:59 GMT",
        ] {
            assert!(parse_http_date(good).is_some(), "{good}");
        }
    }
}
