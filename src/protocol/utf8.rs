//! Incremental, fail-fast UTF-8 validation (RFC 6455 §8.1).
//!
//! Text arrives in chunks that split characters anywhere: across reads, frames and fragments.
//! [`Utf8Validator`] runs the standard library's validator (which runs ASCII at memory speed) on
//! each chunk and carries the incomplete tail of at most three bytes to the next one. It reports an
//! error as soon as the bytes seen so far cannot be the prefix of valid UTF-8, not at the end of the
//! message, which is what Autobahn's "fail fast" cases demand.

/// The position of the first invalid byte sequence in a validated stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error {
    /// Offset, from the start of the stream, of the first byte of the invalid sequence. Equal to
    /// `std::str::from_utf8(whole).unwrap_err().valid_up_to()` for the whole stream.
    pub valid_up_to: u64,
}

impl std::fmt::Display for Utf8Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid UTF-8 at byte {}", self.valid_up_to)
    }
}

impl std::error::Error for Utf8Error {}

/// Validates a UTF-8 stream fed in arbitrary chunks.
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    /// Bytes of a character that started in an earlier chunk and is not complete yet.
    carry: [u8; 4],
    carry_len: u8,
    /// Bytes of the stream accepted so far, not counting the carry.
    consumed: u64,
}

/// How long a character is, from its first byte; 0 for a byte that cannot start one.
#[inline]
fn char_width(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

impl Utf8Validator {
    /// A validator at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a new stream.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Whether the stream so far ends in the middle of a character.
    pub fn is_incomplete(&self) -> bool {
        self.carry_len != 0
    }

    /// Validate the next chunk. Fails as soon as the stream cannot be valid UTF-8 any more.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Utf8Error> {
        if self.carry_len != 0 {
            let have = self.carry_len as usize;
            let need = char_width(self.carry[0]);
            let take = (need - have).min(chunk.len());
            self.carry[have..have + take].copy_from_slice(&chunk[..take]);
            let len = have + take;
            match std::str::from_utf8(&self.carry[..len]) {
                Ok(_) => {
                    self.consumed += len as u64;
                    self.carry_len = 0;
                    chunk = &chunk[take..];
                }
                Err(e) if e.error_len().is_some() => return Err(Utf8Error { valid_up_to: self.consumed }),
                Err(_) => {
                    // Still a valid prefix of a character, and the chunk is used up.
                    self.carry_len = len as u8;
                    return Ok(());
                }
            }
        }
        match std::str::from_utf8(chunk) {
            Ok(_) => {
                self.consumed += chunk.len() as u64;
                Ok(())
            }
            Err(e) => {
                let valid = e.valid_up_to();
                if e.error_len().is_some() {
                    return Err(Utf8Error { valid_up_to: self.consumed + valid as u64 });
                }
                // An incomplete but so far valid character at the end: carry it (at most 3 bytes).
                let tail = &chunk[valid..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                self.consumed += valid as u64;
                Ok(())
            }
        }
    }

    /// End of the stream: an unfinished character is an error.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        if self.carry_len != 0 {
            return Err(Utf8Error { valid_up_to: self.consumed });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate_chunks(chunks: &[&[u8]]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        for c in chunks {
            v.feed(c)?;
        }
        v.finish()
    }

    #[test]
    fn ascii_and_multibyte_whole() {
        assert!(validate_chunks(&[b"hello"]).is_ok());
        assert!(validate_chunks(&["κόσμε".as_bytes()]).is_ok());
        assert!(validate_chunks(&[b""]).is_ok());
    }

    #[test]
    fn character_split_across_every_boundary() {
        let s = "a€𝄞b".as_bytes();
        for i in 0..=s.len() {
            for j in i..=s.len() {
                assert!(validate_chunks(&[&s[..i], &s[i..j], &s[j..]]).is_ok(), "{i} {j}");
            }
        }
    }

    #[test]
    fn fails_fast_on_invalid_continuation_in_later_chunk() {
        // E2 82 followed by 'A' in the next chunk: invalid as soon as 'A' arrives.
        let mut v = Utf8Validator::new();
        v.feed(b"ab\xe2\x82").unwrap();
        assert_eq!(v.feed(b"A").unwrap_err().valid_up_to, 2);
    }

    #[test]
    fn fails_fast_on_first_impossible_byte() {
        // Autobahn 6.3.1-style: a code point above U+10FFFF is rejected at F4 90, before the end.
        let mut v = Utf8Validator::new();
        v.feed(b"\xce\xba\xe1\xbd\xb9").unwrap();
        assert_eq!(v.feed(b"\xf4\x90").unwrap_err().valid_up_to, 5);
        // A UTF-16 surrogate (ED A0 ..) fails at its second byte.
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"\xed").is_ok());
        assert_eq!(v.feed(b"\xa0").unwrap_err().valid_up_to, 0);
        // Overlong encodings fail at the first byte that makes them impossible.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xc0").unwrap_err().valid_up_to, 0);
        let mut v = Utf8Validator::new();
        v.feed(b"\xe0").unwrap();
        assert_eq!(v.feed(b"\x80").unwrap_err().valid_up_to, 0);
    }

    #[test]
    fn incomplete_at_end_fails_on_finish() {
        let mut v = Utf8Validator::new();
        v.feed(b"ok\xf0\x9f\x98").unwrap();
        assert!(v.is_incomplete());
        assert_eq!(v.finish().unwrap_err().valid_up_to, 2);
    }

    #[test]
    fn error_offset_matches_std_for_sample_inputs() {
        let samples: &[&[u8]] =
            &[b"\xff", b"abc\x80def", b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc", b"a\xf8\x88\x80\x80\x80"];
        for s in samples {
            let std_err = std::str::from_utf8(s).unwrap_err();
            for split in 0..=s.len() {
                let r = validate_chunks(&[&s[..split], &s[split..]]);
                assert_eq!(r.unwrap_err().valid_up_to, std_err.valid_up_to() as u64, "{s:?} split {split}");
            }
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut v = Utf8Validator::new();
        v.feed(b"\xe2").unwrap();
        v.reset();
        assert!(!v.is_incomplete());
        v.feed(b"x").unwrap();
        v.finish().unwrap();
    }
}
