//! zstd (levels 1 and 3) against lz4_flex (block format) on the bodies a response cache stores:
//! a 64 KiB JSON body, 1 MiB of text and 64 KiB of incompressible bytes. Prints a Markdown table
//! of ratio, compress µs and decompress µs (median of the runs).

use std::hint::black_box;
use std::time::Instant;

fn json_64k() -> Vec<u8> {
    let mut s = String::from("[");
    let mut n = 0u64;
    while s.len() < 64 * 1024 - 200 {
        if n > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"id":{n},"sku":"SKU-{:06}","name":"Product number {n}","price":{}.{:02},"in_stock":{},"tags":["tag{}","tag{}"],"description":"A fine product with id {n} for the benchmark"}}"#,
            n * 7919 % 1_000_000,
            n % 500,
            n % 100,
            n % 3 == 0,
            n % 17,
            n % 5
        ));
        n += 1;
    }
    s.push(']');
    s.into_bytes()
}

fn text_1m() -> Vec<u8> {
    let words = [
        "cache", "valkey", "response", "the", "of", "and", "entry", "fresh", "stale", "key",
        "invalidate", "server", "a", "to", "is", "tower", "axum", "request", "handler", "body",
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(1 << 20);
    while out.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
        out.push(if x % 11 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(1 << 20);
    out
}

fn random_64k() -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn median_us(runs: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..runs / 10 + 1 {
        f();
    }
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

fn main() {
    let inputs = [
        ("64 KiB JSON", json_64k(), 400),
        ("1 MiB text", text_1m(), 40),
        ("64 KiB random", random_64k(), 400),
    ];
    println!("| input | codec | stored bytes | ratio | compress µs | decompress µs |");
    println!("|---|---|---:|---:|---:|---:|");
    for (name, data, runs) in &inputs {
        let c = lz4_flex::block::compress(data);
        let mut out = vec![0u8; data.len()];
        let cu = median_us(*runs, || {
            black_box(lz4_flex::block::compress(black_box(data)));
        });
        let du = median_us(*runs, || {
            black_box(lz4_flex::block::decompress_into(black_box(&c), &mut out).unwrap());
        });
        assert_eq!(&out, data);
        row(name, "lz4_flex (block)", data.len(), c.len(), cu, du);
        for level in [1, 3] {
            let c = zstd::bulk::compress(data, level).unwrap();
            let mut dec = zstd::bulk::Decompressor::new().unwrap();
            let mut comp = zstd::bulk::Compressor::new(level).unwrap();
            let cu = median_us(*runs, || {
                black_box(comp.compress(black_box(data)).unwrap());
            });
            let du = median_us(*runs, || {
                black_box(dec.decompress_to_buffer(black_box(&c), &mut out).unwrap());
            });
            assert_eq!(&out, data);
            row(name, &format!("zstd level {level}"), data.len(), c.len(), cu, du);
        }
    }
}

fn row(input: &str, codec: &str, plain: usize, stored: usize, cu: f64, du: f64) {
    println!(
        "| {input} | {codec} | {stored} | {:.2} | {cu:.0} | {du:.0} |",
        plain as f64 / stored as f64
    );
}
