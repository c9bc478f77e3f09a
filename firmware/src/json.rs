//! A streaming JSON tokenizer with fixed memory, shared by the `conf.json`
//! and GitHub release parsers.
//!
//! Bytes are pushed in chunks of any size (as they arrive from the network or
//! from flash) and every token is handed to a sink together with the path of
//! the value it belongs to (`assets[2].name`), so that parsers can name the
//! field an error is about. Memory is fixed: one value buffer of `N` bytes
//! and one key of [`MAX_KEY_LEN`] bytes per nesting level; a string longer
//! than the buffer is delivered truncated and marked so, which is how a
//! 64 KiB release `body` streams past without a 64 KiB buffer.
//!
//! Why not a crate: picojson's push parser ties every input chunk's lifetime
//! to the parser, which a sans-IO core fed from a reused network buffer
//! cannot satisfy, and serde-json-core needs the whole document in memory.

use core::fmt;
use heapless::{String, Vec};

/// Deepest nesting accepted; deeper documents are hostile, not releases.
pub const MAX_DEPTH: usize = 16;
/// Longest object key kept; longer keys are kept truncated and never match.
pub const MAX_KEY_LEN: usize = 32;

/// One step of a path: an object key or an array index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    /// A member of an object.
    Key(&'a str),
    /// An element of an array.
    Index(u32),
}

/// Where a value sits in the document, from the root.
pub struct Path<'a> {
    levels: &'a [Level],
}

impl<'a> Path<'a> {
    /// Number of segments.
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    /// True for the root value.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// The segment at `depth` (0 is the outermost).
    pub fn segment(&self, depth: usize) -> Option<Segment<'a>> {
        self.levels.get(depth).map(Level::segment)
    }

    /// True when the path is exactly these keys (array levels never match).
    pub fn is(&self, keys: &[&str]) -> bool {
        self.levels.len() == keys.len()
            && self
                .levels
                .iter()
                .zip(keys)
                .all(|(level, key)| level.segment() == Segment::Key(key))
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, level) in self.levels.iter().enumerate() {
            match level.segment() {
                Segment::Key(k) if i == 0 => f.write_str(k)?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A string value or key as delivered to a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Text<'a> {
    /// The (possibly truncated) text.
    pub value: &'a str,
    /// True when the original was longer than the tokenizer's buffer.
    pub truncated: bool,
}

/// One token of the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token<'a> {
    /// `{`
    StartObject,
    /// `}`
    EndObject,
    /// `[`
    StartArray,
    /// `]`
    EndArray,
    /// A string value.
    Str(Text<'a>),
    /// A number, as written.
    Number(&'a str),
    /// `true` or `false`.
    Bool(bool),
    /// `null`
    Null,
}

/// What is wrong with the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonErrorKind {
    /// A byte that cannot appear here.
    UnexpectedByte(u8),
    /// The document ended before its last value was complete.
    UnexpectedEnd,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A number longer than the value buffer.
    NumberTooLong,
    /// A string that is not UTF-8, or a bad `\u` escape.
    InvalidString,
    /// A control character (U+0000 to U+001F) written as is inside a string: JSON wants it escaped.
    ControlCharacter(u8),
    /// Bytes other than white space after the document.
    TrailingData,
}

/// A syntax error and the byte offset it was found at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonError {
    /// What is wrong.
    pub kind: JsonErrorKind,
    /// Offset of the offending byte from the start of the document.
    pub offset: u32,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            JsonErrorKind::UnexpectedByte(b) if b.is_ascii_graphic() => {
                write!(f, "unexpected '{}' at byte {}", b as char, self.offset)
            }
            JsonErrorKind::UnexpectedByte(b) => {
                write!(f, "unexpected byte 0x{b:02x} at byte {}", self.offset)
            }
            JsonErrorKind::UnexpectedEnd => write!(f, "document ends early (byte {})", self.offset),
            JsonErrorKind::TooDeep => {
                write!(f, "nesting deeper than {MAX_DEPTH} at byte {}", self.offset)
            }
            JsonErrorKind::NumberTooLong => write!(f, "number too long at byte {}", self.offset),
            JsonErrorKind::InvalidString => write!(f, "invalid string at byte {}", self.offset),
            JsonErrorKind::ControlCharacter(b) => write!(
                f,
                "control character 0x{b:02x} inside a string at byte {} (write it escaped: \\n, \\t, \\u00{b:02x})",
                self.offset
            ),
            JsonErrorKind::TrailingData => {
                write!(f, "data after the document at byte {}", self.offset)
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Level {
    is_object: bool,
    key: String<MAX_KEY_LEN>,
    key_truncated: bool,
    index: u32,
    /// No member/element seen yet, so a closing bracket is allowed without a comma.
    empty: bool,
}

impl Level {
    fn segment(&self) -> Segment<'_> {
        if self.is_object {
            // A truncated key must never match a real one: the NUL cannot appear in `is()`'s keys.
            if self.key_truncated {
                Segment::Key("\0")
            } else {
                Segment::Key(self.key.as_str())
            }
        } else {
            Segment::Index(self.index)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A value (document start, after `:`, after `,` in an array, or first in an array).
    Value,
    /// A key or, when the object is still empty, `}`.
    Key,
    /// The `:` after a key.
    Colon,
    /// `,` or the closing bracket (or the end of the document at depth 0).
    Next,
    /// Inside a string.
    Str { is_key: bool },
    /// After a backslash in a string.
    Escape { is_key: bool },
    /// Inside `\uXXXX`: how many hex digits are read and their value so far.
    Unicode { is_key: bool, digits: u8, code: u16 },
    /// Inside a number.
    Number,
    /// Inside `true`, `false` or `null`: which literal and how far.
    Literal { word: &'static [u8], at: u8 },
    /// The document is complete; only white space may follow.
    Done,
}

/// The tokenizer. `N` is the value buffer size in bytes.
pub struct Tokenizer<const N: usize> {
    expect: Expect,
    levels: Vec<Level, MAX_DEPTH>,
    value: Vec<u8, N>,
    truncated: bool,
    high_surrogate: Option<u16>,
    offset: u32,
}

impl<const N: usize> Default for Tokenizer<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Tokenizer<N> {
    /// A tokenizer at the start of a document.
    pub const fn new() -> Self {
        Tokenizer {
            expect: Expect::Value,
            levels: Vec::new(),
            value: Vec::new(),
            truncated: false,
            high_surrogate: None,
            offset: 0,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// The path of the value being read: inside a key, the object the key belongs to.
    /// Lets a parser name the field a syntax error sits in.
    pub fn value_path(&self) -> Path<'_> {
        let in_key = matches!(
            self.expect,
            Expect::Str { is_key: true }
                | Expect::Escape { is_key: true }
                | Expect::Unicode { is_key: true, .. }
        );
        let depth = self.levels.len() - usize::from(in_key && !self.levels.is_empty());
        Path {
            levels: &self.levels[..depth],
        }
    }

    /// Feeds a chunk; `sink` receives each token with the path of its value.
    pub fn push<E: From<JsonError>>(
        &mut self,
        chunk: &[u8],
        sink: &mut impl FnMut(&Path<'_>, Token<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        for &byte in chunk {
            self.byte(byte, sink)?;
            self.offset = self.offset.saturating_add(1);
        }
        Ok(())
    }

    /// Declares the end of the document: errors if it is incomplete.
    pub fn finish<E: From<JsonError>>(
        &mut self,
        sink: &mut impl FnMut(&Path<'_>, Token<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.expect == Expect::Number && self.levels.is_empty() {
            self.emit_number(sink)?;
            self.expect = Expect::Done;
        }
        if self.expect == Expect::Done {
            Ok(())
        } else {
            Err(self.error(JsonErrorKind::UnexpectedEnd).into())
        }
    }

    fn error(&self, kind: JsonErrorKind) -> JsonError {
        JsonError {
            kind,
            offset: self.offset,
        }
    }

    fn byte<E: From<JsonError>>(
        &mut self,
        b: u8,
        sink: &mut impl FnMut(&Path<'_>, Token<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        match self.expect {
            Expect::Str { is_key } => self.string_byte(b, is_key, sink),
            Expect::Escape { is_key } => self.escape_byte(b, is_key),
            Expect::Unicode {
                is_key,
                digits,
                code,
            } => self.unicode_byte(b, is_key, digits, code),
            Expect::Number => {
                if matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                    self.value
                        .push(b)
                        .map_err(|_| self.error(JsonErrorKind::NumberTooLong))?;
                    Ok(())
                } else {
                    self.emit_number(sink)?;
                    self.after_value();
                    self.byte(b, sink)
                }
            }
            Expect::Literal { word, at } => {
                if b != word[usize::from(at)] {
                    return Err(self.error(JsonErrorKind::UnexpectedByte(b)).into());
                }
                if usize::from(at) + 1 < word.len() {
                    self.expect = Expect::Literal { word, at: at + 1 };
                    return Ok(());
                }
                let token = match word {
                    b"true" => Token::Bool(true),
                    b"false" => Token::Bool(false),
                    _ => Token::Null,
                };
                self.emit(token, sink)?;
                self.after_value();
                Ok(())
            }
            _ if matches!(b, b' ' | b'\t' | b'\n' | b'\r') => Ok(()),
            Expect::Done => Err(self.error(JsonErrorKind::TrailingData).into()),
            Expect::Colon if b == b':' => {
                self.expect = Expect::Value;
                Ok(())
            }
            Expect::Key if b == b'"' => {
                self.start_string(true);
                Ok(())
            }
            Expect::Key if b == b'}' && self.levels.last().is_some_and(|l| l.empty) => {
                self.close(true, sink)
            }
            Expect::Next => match b {
                b',' if !self.levels.is_empty() => {
                    // `levels` is non-empty: checked in the guard.
                    let is_object = self.levels.last().is_some_and(|l| l.is_object);
                    if let Some(level) = self.levels.last_mut()
                        && !is_object
                    {
                        level.index = level.index.saturating_add(1);
                    }
                    self.expect = if is_object {
                        Expect::Key
                    } else {
                        Expect::Value
                    };
                    Ok(())
                }
                b'}' if self.levels.last().is_some_and(|l| l.is_object) => self.close(true, sink),
                b']' if self.levels.last().is_some_and(|l| !l.is_object) => self.close(false, sink),
                _ => Err(self.error(JsonErrorKind::UnexpectedByte(b)).into()),
            },
            Expect::Value => match b {
                b'{' | b'[' => {
                    let is_object = b == b'{';
                    self.emit(
                        if is_object {
                            Token::StartObject
                        } else {
                            Token::StartArray
                        },
                        sink,
                    )?;
                    if let Some(parent) = self.levels.last_mut() {
                        parent.empty = false;
                    }
                    let level = Level {
                        is_object,
                        key: String::new(),
                        key_truncated: false,
                        index: 0,
                        empty: true,
                    };
                    self.levels
                        .push(level)
                        .map_err(|_| self.error(JsonErrorKind::TooDeep))?;
                    self.expect = if is_object {
                        Expect::Key
                    } else {
                        Expect::Value
                    };
                    Ok(())
                }
                b']' if self.levels.last().is_some_and(|l| !l.is_object && l.empty) => {
                    self.close(false, sink)
                }
                b'"' => {
                    self.start_string(false);
                    Ok(())
                }
                b'-' | b'0'..=b'9' => {
                    self.value.clear();
                    // The buffer is empty and N > 0 for any useful tokenizer; an N of 0 reports NumberTooLong.
                    self.value
                        .push(b)
                        .map_err(|_| self.error(JsonErrorKind::NumberTooLong))?;
                    self.expect = Expect::Number;
                    Ok(())
                }
                b't' => self.start_literal(b"true"),
                b'f' => self.start_literal(b"false"),
                b'n' => self.start_literal(b"null"),
                _ => Err(self.error(JsonErrorKind::UnexpectedByte(b)).into()),
            },
            _ => Err(self.error(JsonErrorKind::UnexpectedByte(b)).into()),
        }
    }

    fn start_literal<E: From<JsonError>>(&mut self, word: &'static [u8]) -> Result<(), E> {
        self.expect = Expect::Literal { word, at: 1 };
        Ok(())
    }

    fn start_string(&mut self, is_key: bool) {
        self.value.clear();
        self.truncated = false;
        self.high_surrogate = None;
        self.expect = Expect::Str { is_key };
    }

    fn push_value_byte(&mut self, b: u8) {
        if self.value.push(b).is_err() {
            self.truncated = true;
        }
    }

    fn push_char(&mut self, c: char) {
        let mut utf8 = [0u8; 4];
        for &b in c.encode_utf8(&mut utf8).as_bytes() {
            self.push_value_byte(b);
        }
    }

    fn string_byte<E: From<JsonError>>(
        &mut self,
        b: u8,
        is_key: bool,
        sink: &mut impl FnMut(&Path<'_>, Token<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        match b {
            b'"' => self.end_string(is_key, sink),
            b'\\' => {
                self.expect = Expect::Escape { is_key };
                Ok(())
            }
            0..=0x1f => Err(self.error(JsonErrorKind::ControlCharacter(b)).into()),
            _ => {
                self.flush_surrogate();
                self.push_value_byte(b);
                Ok(())
            }
        }
    }

    fn escape_byte<E: From<JsonError>>(&mut self, b: u8, is_key: bool) -> Result<(), E> {
        let c = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                self.expect = Expect::Unicode {
                    is_key,
                    digits: 0,
                    code: 0,
                };
                return Ok(());
            }
            _ => return Err(self.error(JsonErrorKind::InvalidString).into()),
        };
        self.flush_surrogate();
        self.push_char(c);
        self.expect = Expect::Str { is_key };
        Ok(())
    }

    fn unicode_byte<E: From<JsonError>>(
        &mut self,
        b: u8,
        is_key: bool,
        digits: u8,
        code: u16,
    ) -> Result<(), E> {
        let nibble = (b as char)
            .to_digit(16)
            .ok_or_else(|| self.error(JsonErrorKind::InvalidString))?;
        // At most four digits of at most 0xF each: fits in u16.
        let code = (code << 4) | nibble as u16;
        if digits < 3 {
            self.expect = Expect::Unicode {
                is_key,
                digits: digits + 1,
                code,
            };
            return Ok(());
        }
        self.expect = Expect::Str { is_key };
        match code {
            0xD800..=0xDBFF => {
                self.flush_surrogate();
                self.high_surrogate = Some(code);
            }
            0xDC00..=0xDFFF => match self.high_surrogate.take() {
                Some(high) => {
                    let scalar =
                        0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(code) - 0xDC00);
                    self.push_char(char::from_u32(scalar).unwrap_or(char::REPLACEMENT_CHARACTER));
                }
                None => self.push_char(char::REPLACEMENT_CHARACTER),
            },
            _ => {
                self.flush_surrogate();
                self.push_char(
                    char::from_u32(u32::from(code)).unwrap_or(char::REPLACEMENT_CHARACTER),
                );
            }
        }
        Ok(())
    }

    /// A high surrogate not followed by a low one stands for U+FFFD.
    fn flush_surrogate(&mut self) {
        if self.high_surrogate.take().is_some() {
            self.push_char(char::REPLACEMENT_CHARACTER);
        }
    }

    fn end_string<E: From<JsonError>>(
        &mut self,
        is_key: bool,
        sink: &mut impl FnMut(&Path<'_>, Token<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.flush_surrogate();
        let (valid, truncated) = match core::str::from_utf8(&self.value) {
            Ok(_) => (self.value.len(), self.truncated),
            // Truncation may have split a character: keep the valid prefix.
            Err(e) if self.truncated && e.error_len().is_none() => (e.valid_up_to(), true),
            Err(_) => return Err(self.error(JsonErrorKind::InvalidString).into()),
        };
        if is_key {
            let level = self.levels.last_mut().ok_or(JsonError {
                kind: JsonErrorKind::InvalidString,
                offset: self.offset,
            })?;
            level.key.clear();
            level.key_truncated = truncated || valid > MAX_KEY_LEN;
            let text = core::str::from_utf8(&self.value[..valid.min(MAX_KEY_LEN)]).unwrap_or("");
            // `push_str` cannot fail: the text is at most MAX_KEY_LEN bytes.
            let _ = level.key.push_str(text);
            level.empty = false;
            self.expect = Expect::Colon;
            Ok(())
        } else {
            let value = core::str::from_utf8(&self.value[..valid])
                .map_err(|_| self.error(JsonErrorKind::InvalidString))?;
            let path = Path {
                levels: &self.levels,
            };
            sink(&path, Token::Str(Text { value, truncated }))?;
            self.after_value();
            Ok(())
        }
    }

    fn emit_number<E: From<JsonError>>(
        &mut self,
        sink: &mut impl FnMut(&Path<'_>, Token<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let text = core::str::from_utf8(&self.value)
            .map_err(|_| self.error(JsonErrorKind::InvalidString))?;
        let path = Path {
            levels: &self.levels,
        };
        sink(&path, Token::Number(text))
    }

    fn emit<E: From<JsonError>>(
        &mut self,
        token: Token<'_>,
        sink: &mut impl FnMut(&Path<'_>, Token<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let path = Path {
            levels: &self.levels,
        };
        sink(&path, token)
    }

    fn close<E: From<JsonError>>(
        &mut self,
        is_object: bool,
        sink: &mut impl FnMut(&Path<'_>, Token<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.levels.pop();
        self.emit(
            if is_object {
                Token::EndObject
            } else {
                Token::EndArray
            },
            sink,
        )?;
        self.after_value();
        Ok(())
    }

    fn after_value(&mut self) {
        if let Some(level) = self.levels.last_mut() {
            level.empty = false;
        }
        self.expect = if self.levels.is_empty() {
            Expect::Done
        } else {
            Expect::Next
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::string::{String as StdString, ToString};
    use std::vec::Vec as StdVec;

    fn tokens(doc: &[u8], chunk: usize) -> Result<StdVec<StdString>, JsonError> {
        let mut out = StdVec::new();
        let mut t = Tokenizer::<16>::new();
        let mut sink = |path: &Path<'_>, token: Token<'_>| -> Result<(), JsonError> {
            out.push(format!("{path}={token:?}"));
            Ok(())
        };
        for piece in doc.chunks(chunk.max(1)) {
            t.push(piece, &mut sink)?;
        }
        t.finish(&mut sink)?;
        Ok(out)
    }

    #[test]
    fn tokens_carry_the_path_of_their_value() {
        let doc = br#"{"a": {"b": [1, "x", true, null]}, "c": -2.5e3}"#;
        let got = tokens(doc, 3).unwrap();
        assert_eq!(
            got,
            [
                "=StartObject",
                "a=StartObject",
                "a.b=StartArray",
                "a.b[0]=Number(\"1\")",
                "a.b[1]=Str(Text { value: \"x\", truncated: false })",
                "a.b[2]=Bool(true)",
                "a.b[3]=Null",
                "a.b=EndArray",
                "a=EndObject",
                "c=Number(\"-2.5e3\")",
                "=EndObject",
            ]
        );
    }

    #[test]
    fn chunking_does_not_change_the_tokens() {
        let doc = br#"{"k":"\u00e9\ud83d\ude00 \"q\"","e":[],"o":{},"n":[[]]}"#;
        let whole = tokens(doc, doc.len()).unwrap();
        for chunk in 1..8 {
            assert_eq!(tokens(doc, chunk).unwrap(), whole, "chunk size {chunk}");
        }
        assert!(whole[1].contains("é😀 \\\"q\\\""), "{}", whole[1]);
    }

    #[test]
    fn long_strings_are_truncated_not_rejected() {
        let doc = br#"{"body":"0123456789abcdefghijklmnop","x":1}"#;
        let got = tokens(doc, 5).unwrap();
        assert_eq!(
            got[1],
            "body=Str(Text { value: \"0123456789abcdef\", truncated: true })"
        );
        assert_eq!(got[2], "x=Number(\"1\")");
    }

    #[test]
    fn malformed_documents_fail_with_an_offset() {
        let err = |doc: &[u8]| tokens(doc, 4).unwrap_err();
        assert_eq!(err(b"{\"a\" 1}").kind, JsonErrorKind::UnexpectedByte(b'1'));
        assert_eq!(err(b"{\"a\" 1}").offset, 5);
        assert_eq!(err(b"{\"a\":1").kind, JsonErrorKind::UnexpectedEnd);
        assert_eq!(err(b"").kind, JsonErrorKind::UnexpectedEnd);
        assert_eq!(err(b"[1,]").kind, JsonErrorKind::UnexpectedByte(b']'));
        assert_eq!(err(b"{} x").kind, JsonErrorKind::TrailingData);
        assert_eq!(err(b"[tru]").kind, JsonErrorKind::UnexpectedByte(b']'));
        assert_eq!(err(&[b'['; 40]).kind, JsonErrorKind::TooDeep);
        assert_eq!(
            err(b"[12345678901234567890]").kind,
            JsonErrorKind::NumberTooLong
        );
        assert_eq!(err(b"\"\\x\"").kind, JsonErrorKind::InvalidString);
        assert_eq!(err(b"[\"\xff\"]").kind, JsonErrorKind::InvalidString);
    }

    #[test]
    fn a_raw_control_character_in_a_string_is_named_and_escaped_ones_are_not() {
        let e = tokens(b"{\"a\": \"line\none\"}", 3).unwrap_err();
        assert_eq!(
            (e.kind, e.offset),
            (JsonErrorKind::ControlCharacter(b'\n'), 11)
        );
        assert!(e.to_string().contains("control character 0x0a"), "{e}");
        assert_eq!(
            tokens(b"[\"\x00\"]", 1).unwrap_err().kind,
            JsonErrorKind::ControlCharacter(0)
        );
        assert_eq!(
            tokens(b"{\"k\x1f\": 1}", 2).unwrap_err().kind,
            JsonErrorKind::ControlCharacter(0x1f)
        );
        // DEL and escaped control characters are fine.
        let ok = tokens(b"[\"\x7f\\n\\u0001\"]", 2).unwrap();
        assert_eq!(
            ok[1],
            "[0]=Str(Text { value: \"\\u{7f}\\n\\u{1}\", truncated: false })"
        );
    }

    #[test]
    fn the_value_path_names_the_value_being_read() {
        let mut t = Tokenizer::<16>::new();
        let mut sink = |_: &Path<'_>, _: Token<'_>| -> Result<(), JsonError> { Ok(()) };
        t.push(br#"{"wifi": {"ssid": "ab"#, &mut sink).unwrap();
        assert_eq!(t.value_path().to_string(), "wifi.ssid");
        t.push(br#"c", "pass"#, &mut sink).unwrap();
        // Inside a key: the object it belongs to.
        assert_eq!(t.value_path().to_string(), "wifi");
    }

    #[test]
    fn a_bare_number_document_completes_at_finish() {
        assert_eq!(tokens(b"42", 1).unwrap(), ["=Number(\"42\")".to_string()]);
    }
}
