//! Helpers shared by the fuzz targets.

/// Splits `data` into chunks whose sizes (0 to 17 bytes, empty chunks included: a network read
/// may return nothing) come from a small generator seeded by `seed`, so that each input also
/// chooses how it arrives in pieces.
pub fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 0x9E37_7900;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // xorshift32: deterministic, no dependency.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = (state % 18) as usize;
        let (head, tail) = rest.split_at(size.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// The first byte of a fuzz input as a seed, the rest as the payload.
pub fn seed_and_payload(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&seed, rest)) => (seed, rest),
        None => (0, data),
    }
}
