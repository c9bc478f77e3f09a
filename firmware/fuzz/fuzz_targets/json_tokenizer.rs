//! The streaming JSON tokenizer: any chunking gives the same tokens and the same error,
//! errors point inside the document, and paths never exceed the nesting limit.
#![no_main]
use firmware::json::{JsonError, MAX_DEPTH, Path, Token, Tokenizer};
use firmware_fuzz::{chunks, seed_and_payload};
use libfuzzer_sys::fuzz_target;

fn run(pieces: &[&[u8]]) -> (Vec<String>, Result<(), JsonError>) {
    let mut out = Vec::new();
    let mut tokenizer = Tokenizer::<24>::new();
    let mut sink = |path: &Path<'_>, token: Token<'_>| -> Result<(), JsonError> {
        assert!(path.len() <= MAX_DEPTH, "path deeper than MAX_DEPTH");
        if let Token::Str(text) = token {
            assert!(text.value.len() <= 24, "string longer than the buffer");
        }
        out.push(format!("{path}={token:?}"));
        Ok(())
    };
    let mut result = Ok(());
    for piece in pieces {
        result = tokenizer.push(piece, &mut sink);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = tokenizer.finish(&mut sink);
    }
    (out, result)
}

fuzz_target!(|data: &[u8]| {
    let (seed, doc) = seed_and_payload(data);
    let whole = run(&[doc]);
    let pieces = run(&chunks(doc, seed));
    assert_eq!(whole, pieces, "chunking changed the tokens");
    if let Err(e) = whole.1 {
        assert!(
            e.offset as usize <= doc.len(),
            "error offset beyond the document: {e}"
        );
    }
});
