//! Trace lines: a line that parses into an event renders back to a line that parses into the
//! same event at the same time, and rendering is a fixed point after one round.
#![no_main]
use firmware::trace::Event;
use libfuzzer_sys::fuzz_target;

fn render(ms: u64, event: &Event) -> String {
    let mut line = String::new();
    event
        .write_line(ms, &mut line)
        .expect("writing to a String");
    line
}

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Some(Ok((ms, event))) = Event::parse_line(line) else {
        return;
    };
    let rendered = render(ms, &event);
    match Event::parse_line(&rendered) {
        Some(Ok((ms2, event2))) => {
            assert_eq!(
                (ms2, &event2),
                (ms, &event),
                "line {rendered:?} parses differently"
            );
            assert_eq!(render(ms2, &event2), rendered);
        }
        other => panic!("rendered line {rendered:?} does not parse: {other:?}"),
    }
    let mut json = String::new();
    event
        .write_json(&[], &mut json)
        .expect("writing to a String");
    assert!(json.starts_with("{\"event\":\"") && json.ends_with('}'));
});
