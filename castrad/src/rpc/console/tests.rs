use std::sync::Arc;
use std::time::Duration;

use super::*;

fn chunk(pos: u64, logged: Option<(u64, usize)>, bytes: &[u8]) -> Chunk {
    Chunk {
        pos,
        logged,
        bytes: Arc::from(bytes),
    }
}

#[test]
fn text_is_utf8_with_split_characters_joined_and_the_rest_replaced() {
    let mut t = Utf8::default();
    let euro = "€".as_bytes();
    assert_eq!(t.push(&[b'a', euro[0]]), "a");
    assert_eq!(t.push(&euro[1..]), "€");
    assert_eq!(t.push(b"\xffok\x1b[31m"), "\u{fffd}ok\x1b[31m");
    assert_eq!(t.push(&euro[..2]), "");
    assert_eq!(t.finish(), "\u{fffd}");
    assert_eq!(t.push(b"x"), "x");
}

#[test]
fn the_tail_is_bounded_and_starts_at_a_character() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serial.log");
    assert_eq!(read_tail_now(&path, 10).unwrap(), Tail::default());
    std::fs::write(&path, "abc€def").unwrap();
    let whole = read_tail_now(&path, 100).unwrap();
    assert_eq!((whole.bytes.len(), whole.size, whole.skipped), (9, 9, 0));
    // The last 5 bytes begin inside the euro sign: its continuation bytes are dropped.
    let end = read_tail_now(&path, 5).unwrap();
    assert_eq!((&end.bytes[..], end.size, end.skipped), (&b"def"[..], 9, 6));
}

#[test]
fn what_the_tail_had_is_not_sent_again_and_lost_chunks_are_counted() {
    let now = Instant::now();
    // The tail was read when the log had 10 bytes.
    let mut pace = Pace::new(10, now);
    // Written at 6..12 before the tail was read (in part): 4 bytes already sent.
    let c = chunk(6, Some((6, 6)), b"abcdef");
    assert_eq!(pace.admit(&c, now), (&b"ef"[..], 0));
    // Next, 12..15, whole; then a chunk the follower lost (15..20) before 20..22, past the
    // cap (not logged).
    let c = chunk(12, Some((12, 3)), b"ghi");
    assert_eq!(pace.admit(&c, now), (&b"ghi"[..], 0));
    let c = chunk(20, None, b"xy");
    assert_eq!(pace.admit(&c, now), (&b"xy"[..], 5));
}

#[test]
fn delivery_is_bounded_by_a_burst_then_a_rate() {
    let t0 = Instant::now();
    let mut pace = Pace::new(0, t0);
    let big = vec![b'x'; 200 << 10];
    let mut pos = 0;
    let mut sent = 0u64;
    let mut left_out = 0u64;
    // Two seconds of a guest writing 200 KiB every 10 ms (20 MiB/s).
    for i in 0..200u32 {
        let c = chunk(pos, None, &big);
        pos += big.len() as u64;
        let (bytes, skipped) = pace.admit(&c, t0 + Duration::from_millis(10 * u64::from(i)));
        sent += bytes.len() as u64;
        left_out += skipped;
    }
    assert_eq!(sent + left_out, pos);
    let bound = BURST + 2 * RATE;
    assert!(sent <= bound, "{sent} > {bound}");
    assert!(sent >= BURST + RATE, "{sent}");
}
