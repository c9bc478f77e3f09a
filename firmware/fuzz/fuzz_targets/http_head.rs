//! Response heads: arbitrary header lines never panic, names are case-insensitive, the last
//! header of a name wins, and the getters keep their promises.
#![no_main]
use firmware::http::{
    ResponseHead, is_downgrade, is_loopback, origin, parse_http_date, same_origin,
};
use libfuzzer_sys::fuzz_target;

fn head(status: u16, lines: &[(&str, &str)], upper: bool) -> ResponseHead {
    let mut head = ResponseHead::new(status);
    for (name, value) in lines {
        if upper {
            head.header(&name.to_ascii_uppercase(), value);
        } else {
            head.header(name, value);
        }
    }
    head
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = [200, 206, 301, 302, 304, 403, 416, 429, 500, 503][usize::from(data[0] % 10)];
    let Ok(text) = std::str::from_utf8(&data[1..]) else {
        return;
    };
    let lines: Vec<(&str, &str)> = text
        .split('\n')
        .filter_map(|line| line.split_once(':'))
        .collect();
    let parsed = head(status, &lines, false);
    assert_eq!(
        parsed,
        head(status, &lines, true),
        "header names are case-sensitive"
    );
    // Weak tags are kept (If-None-Match compares weakly) but never offered for If-Range.
    if let Some(etag) = parsed.strong_etag() {
        assert!(!etag.starts_with("W/"), "weak ETag offered for If-Range");
        assert_eq!(Some(etag), parsed.etag.as_ref());
    }
    assert!(!(parsed.location.is_some() && parsed.location_too_long));
    match parsed.rate_limit_wait_ms() {
        Some(ms) => {
            assert!(matches!(status, 403 | 429));
            assert!(ms >= 1000 || parsed.retry_after_s == Some(0));
        }
        None => assert!(
            !matches!(status, 403 | 429)
                || (parsed.retry_after_s.is_none() && parsed.ratelimit_remaining != Some(0))
        ),
    }
    for (name, value) in &lines {
        if name.trim().eq_ignore_ascii_case("date") {
            let _ = parse_http_date(value.trim());
        }
        let _ = (origin(value), is_loopback(value), same_origin(value, name));
        let _ = is_downgrade(name, value);
    }
    if let Some(location) = &parsed.location {
        let _ = origin(location);
    }
});
