//! Masking (RFC 6455 §5.3): XOR of the payload with a 4-byte key, and unpredictable keys.
//!
//! [`apply_mask`] works a 64-bit word at a time on any alignment and length, in safe code that LLVM
//! turns into SIMD; it takes the payload offset so a frame can be unmasked chunk by chunk as its
//! bytes arrive. On x86-64 the same code is also compiled for AVX2 and picked at run time when the
//! CPU has it (unless the whole build already targets AVX2): 32-byte instead of the baseline's
//! 16-byte SSE2 operations, about twice the speed on payloads of a few KiB and more. [`MaskGen`] draws keys from the operating system's CSPRNG in batches, so a key
//! costs a few nanoseconds and one syscall serves [`MaskGen::BATCH_KEYS`] frames.

/// XOR `buf` in place with `key`, where `buf[0]` is byte `offset` of the frame payload.
///
/// Masking is its own inverse: applying it twice restores the data. Correct for every length and
/// alignment; `offset` may be any value (only `offset % 4` matters).
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    #[cfg(all(target_arch = "x86_64", not(target_feature = "avx2")))]
    if buf.len() >= AVX2_MIN_LEN && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `apply_mask_avx2` is safe code compiled with AVX2 enabled; calling it is sound
        // exactly when the CPU supports AVX2, which was just detected (std caches the CPUID
        // result, so the check is one load and a branch).
        #[allow(unsafe_code)]
        unsafe {
            apply_mask_avx2(buf, key, offset)
        };
        return;
    }
    apply_mask_words(buf, key, offset);
}

/// Payloads shorter than this are masked by the baseline code: the AVX2 path's gain only shows
/// once a few blocks are involved, and small frames should not pay for the feature check.
#[cfg(all(target_arch = "x86_64", not(target_feature = "avx2")))]
const AVX2_MIN_LEN: usize = 128;

/// [`apply_mask_words`] compiled for AVX2.
///
/// `../shared/bench` scenario c (64 KiB echoes) spent 8% of the server's time in the SSE2 loop
/// (`perf`), and `cargo bench --bench core -- mask/` measures this version against the baseline
/// (figures in `docs/performance.md`).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(all(target_arch = "x86_64", not(target_feature = "avx2")))]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
unsafe fn apply_mask_avx2(buf: &mut [u8], key: [u8; 4], offset: usize) {
    apply_mask_words(buf, key, offset);
}

/// The masking loop, for whatever instruction set the caller was compiled for.
#[inline(always)]
fn apply_mask_words(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let k = rotate_key(key, offset);
    let word = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut blocks = buf.chunks_exact_mut(32);
    for block in &mut blocks {
        // Four independent words per block: LLVM vectorises this loop (SSE2/AVX2).
        for w in block.chunks_exact_mut(8) {
            let v = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) ^ word;
            w.copy_from_slice(&v.to_ne_bytes());
        }
    }
    let rest = blocks.into_remainder();
    let mut words = rest.chunks_exact_mut(8);
    for w in &mut words {
        let v = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) ^ word;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    // The tail starts at a multiple of 8 from `buf[0]`, so the rotated key lines up again.
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= k[i & 3];
    }
}

/// [`apply_mask`] without the run-time choice of instruction set: the build's baseline code. Used
/// by tests and the masking benchmark, to show what the AVX2 path gains.
#[doc(hidden)]
pub fn apply_mask_portable(buf: &mut [u8], key: [u8; 4], offset: usize) {
    apply_mask_words(buf, key, offset);
}

/// The key as seen from payload byte `offset`.
#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let r = offset & 3;
    [key[r], key[(r + 1) & 3], key[(r + 2) & 3], key[(r + 3) & 3]]
}

/// The reference implementation: one byte at a time. Used by tests and the masking benchmark.
///
/// Like [`apply_mask`], any `offset` is accepted: the index wraps instead of overflowing near
/// `usize::MAX` (the number of `usize` values is a multiple of 4, so the key position stays right).
#[doc(hidden)]
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[offset.wrapping_add(i) & 3];
    }
}

/// A source of unpredictable masking keys and handshake nonces, backed by the OS CSPRNG.
///
/// RFC 6455 §5.3 requires that a client's masking keys cannot be predicted by the server or by
/// intermediaries, and §4.1 that the handshake key is a random nonce. `MaskGen` reads
/// [`BATCH_KEYS`](Self::BATCH_KEYS) keys at a time from the operating system (`getrandom(2)` on
/// Linux), which is a CSPRNG; it never uses a user-space generator whose state could be guessed.
pub struct MaskGen {
    buf: [u8; Self::BATCH_KEYS * 4],
    pos: usize,
}

impl std::fmt::Debug for MaskGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print unused key material.
        f.debug_struct("MaskGen").field("remaining_keys", &((self.buf.len() - self.pos) / 4)).finish()
    }
}

impl Default for MaskGen {
    fn default() -> Self {
        Self::new()
    }
}

impl MaskGen {
    /// Keys fetched from the OS per system call.
    pub const BATCH_KEYS: usize = 128;

    /// A generator with an empty batch (the first key triggers the first OS read).
    pub fn new() -> Self {
        MaskGen { buf: [0; Self::BATCH_KEYS * 4], pos: Self::BATCH_KEYS * 4 }
    }

    /// The next masking key.
    ///
    /// # Panics
    /// Only if the operating system cannot provide random bytes at all, in which case no secure
    /// WebSocket client can run.
    #[inline]
    pub fn next_key(&mut self) -> [u8; 4] {
        if self.pos == self.buf.len() {
            self.refill();
        }
        let k = [self.buf[self.pos], self.buf[self.pos + 1], self.buf[self.pos + 2], self.buf[self.pos + 3]];
        // Wipe what was handed out, so the batch never holds a key that is already on the wire.
        self.buf[self.pos..self.pos + 4].fill(0);
        self.pos += 4;
        k
    }

    /// Fill `out` with random bytes (for handshake nonces).
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(4) {
            let k = self.next_key();
            chunk.copy_from_slice(&k[..chunk.len()]);
        }
    }

    #[cold]
    fn refill(&mut self) {
        if let Err(e) = getrandom::fill(&mut self.buf) {
            panic!("the operating system's random number generator failed: {e}");
        }
        self.pos = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6455_example_masked_hello() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut data = *b"Hello";
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(data, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&data, b"Hello");
    }

    #[test]
    fn matches_bytewise_for_every_length_offset_and_alignment() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let src: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for align in 0..8 {
            for len in 0..(src.len() - align) {
                for offset in 0..4 {
                    let mut a = src[align..align + len].to_vec();
                    let mut b = a.clone();
                    apply_mask(&mut a, key, offset);
                    apply_mask_bytewise(&mut b, key, offset);
                    assert_eq!(a, b, "len {len} offset {offset} align {align}");
                }
            }
        }
    }

    #[test]
    fn every_instruction_set_variant_matches_bytewise() {
        // Long enough for the vector loops' unrolled blocks (128 bytes with AVX2) plus every tail.
        let key = [0xa1, 0x02, 0xff, 0x7c];
        let src: Vec<u8> = (0..1200u32).map(|i| (i * 31 + 5) as u8).collect();
        type MaskFn = fn(&mut [u8], [u8; 4], usize);
        let mut variants: Vec<(&str, MaskFn)> = vec![("dispatch", apply_mask), ("portable", apply_mask_portable)];
        #[cfg(all(target_arch = "x86_64", not(target_feature = "avx2")))]
        if std::arch::is_x86_feature_detected!("avx2") {
            fn avx2(buf: &mut [u8], key: [u8; 4], offset: usize) {
                // SAFETY: only reached when the CPU was detected to support AVX2.
                #[allow(unsafe_code)]
                unsafe {
                    apply_mask_avx2(buf, key, offset)
                }
            }
            variants.push(("avx2", avx2));
        }
        eprintln!("variants tested: {:?}", variants.iter().map(|v| v.0).collect::<Vec<_>>());
        for (name, f) in variants {
            for align in [0, 1, 3, 7, 13, 31] {
                for len in (0..130).chain([255, 256, 257, 511, 1000, 1024, 1100]) {
                    for offset in [0, 1, 2, 3, 4, 1 << 40] {
                        let mut a = src[align..align + len].to_vec();
                        let mut b = a.clone();
                        f(&mut a, key, offset);
                        apply_mask_bytewise(&mut b, key, offset);
                        assert_eq!(a, b, "{name}: len {len} offset {offset} align {align}");
                    }
                }
            }
        }
    }

    #[test]
    fn chunked_unmasking_equals_whole() {
        let key = [9, 8, 7, 6];
        let src: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut whole = src.clone();
        apply_mask(&mut whole, key, 0);
        let mut chunked = src.clone();
        let mut off = 0;
        for size in [1, 3, 5, 7, 64, 13, 200, 707] {
            let end = (off + size).min(chunked.len());
            apply_mask(&mut chunked[off..end], key, off);
            off = end;
        }
        assert_eq!(off, 1000);
        assert_eq!(whole, chunked);
    }

    #[test]
    fn mask_keys_are_not_repeated_or_constant() {
        let mut g = MaskGen::new();
        let keys: Vec<[u8; 4]> = (0..1000).map(|_| g.next_key()).collect();
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        // 1000 draws from 2^32: a collision is possible but a handful would mean a broken source.
        assert!(distinct.len() > 990, "only {} distinct keys", distinct.len());
        // Two generators must not produce the same sequence (no fixed seed).
        let mut h = MaskGen::new();
        let other: Vec<[u8; 4]> = (0..16).map(|_| h.next_key()).collect();
        assert_ne!(&keys[..16], &other[..]);
    }

    #[test]
    fn fill_produces_requested_length() {
        let mut g = MaskGen::new();
        let mut nonce = [0u8; 16];
        g.fill(&mut nonce);
        assert_ne!(nonce, [0u8; 16]);
        let mut odd = [0u8; 7];
        g.fill(&mut odd);
        assert_ne!(odd, [0u8; 7]);
    }
}
