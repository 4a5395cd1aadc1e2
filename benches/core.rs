//! Micro-benchmarks of the sans-IO protocol core: masking, UTF-8 validation, frame decode and
//! frame encode, each at 16 B, 1 KiB and 64 KiB, with throughput in bytes.
//!
//! ```text
//! cargo bench --bench core -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Results and the machine they were taken on are in `docs/performance.md`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use wsloop::protocol::decoder::{Decoder, DecoderConfig, Event, Role};
use wsloop::protocol::frame::{write_frame, OpCode};
use wsloop::protocol::mask::{apply_mask, apply_mask_bytewise, apply_mask_portable};
use wsloop::protocol::utf8::Utf8Validator;

const SIZES: [usize; 3] = [16, 1024, 64 * 1024];
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn label(size: usize) -> String {
    if size >= 1024 {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 + 7) as u8).collect()
}

/// `size` bytes of ASCII text.
fn ascii(size: usize) -> Vec<u8> {
    b"The quick brown fox jumps over the lazy dog. 0123456789\n".iter().copied().cycle().take(size).collect()
}

/// Text of about `size` bytes mixing 1-, 2-, 3- and 4-byte characters (cut at a character boundary).
fn mixed(size: usize) -> Vec<u8> {
    const SAMPLE: &str = "Größe κόσμε €100 日本語のテキスト 𝄞😀 naïve café ";
    let mut s = String::with_capacity(size + 8);
    for c in SAMPLE.chars().cycle() {
        if s.len() + c.len_utf8() > size {
            break;
        }
        s.push(c);
    }
    s.into_bytes()
}

fn masking(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    for size in SIZES {
        let mut buf = payload(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("apply_mask", label(size)), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY), black_box(0)))
        });
        g.bench_function(BenchmarkId::new("portable", label(size)), |b| {
            b.iter(|| apply_mask_portable(black_box(&mut buf), black_box(KEY), black_box(0)))
        });
        g.bench_function(BenchmarkId::new("bytewise", label(size)), |b| {
            b.iter(|| apply_mask_bytewise(black_box(&mut buf), black_box(KEY), black_box(0)))
        });
    }
    g.finish();
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    for size in SIZES {
        for (name, text) in [("ascii", ascii(size)), ("mixed", mixed(size))] {
            assert!(std::str::from_utf8(&text).is_ok());
            g.throughput(Throughput::Bytes(text.len() as u64));
            g.bench_function(BenchmarkId::new(name, label(size)), |b| {
                b.iter(|| {
                    let mut v = Utf8Validator::new();
                    v.feed(black_box(&text)).unwrap();
                    v.finish().unwrap();
                })
            });
        }
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let config = DecoderConfig::new(Role::Server);
    for size in SIZES {
        let mut frame = BytesMut::new();
        write_frame(&mut frame, OpCode::Binary, true, 0, &payload(size), Some(KEY));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("masked_binary", label(size)), |b| {
            // The decoder unmasks in place and consumes its buffer, so each iteration gets a fresh
            // copy of the frame (made outside the timed part).
            b.iter_batched(
                || BytesMut::from(&frame[..]),
                |mut buf| {
                    let mut dec = Decoder::new(config.clone());
                    let mut data = 0;
                    while let Some(ev) = dec.next_event(&mut buf).unwrap() {
                        if let Event::FrameData(d) = &ev {
                            data += d.len();
                        }
                        black_box(ev);
                    }
                    assert_eq!(data, size);
                    buf
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for size in SIZES {
        let data = payload(size);
        let mut out = BytesMut::with_capacity(size + 14);
        g.throughput(Throughput::Bytes(size as u64));
        for (name, mask) in [("unmasked", None), ("masked", Some(KEY))] {
            g.bench_function(BenchmarkId::new(name, label(size)), |b| {
                b.iter(|| {
                    out.clear();
                    write_frame(&mut out, OpCode::Binary, true, 0, black_box(&data), black_box(mask));
                    black_box(&out);
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, masking, utf8, decode, encode);
criterion_main!(benches);
