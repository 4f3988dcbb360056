//! HPACK header blocks decoded in turn on one dynamic table, some cut
//! short: `agent::protocols::http2::hpack`. Each block is preceded by its
//! length (one byte) and a flag byte: bit 0 set if the block is complete.
#![no_main]

use agent::protocols::http2::hpack::{Decoder, Huffman};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut huffman = Huffman::default();
    let (mut decoder, mut rest) = match data.split_first() {
        Some((first, rest)) if first & 1 == 1 => (Decoder::mid_connection(4096), rest),
        Some((_, rest)) => (Decoder::new(4096), rest),
        None => return,
    };
    while let [len, flags, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let complete = flags & 1 == 1;
        let _ = decoder.decode(&tail[..len], complete, &mut huffman);
        decoder.is_whole();
        if flags & 2 == 2 {
            decoder.forget();
        }
        rest = &tail[len..];
    }
});
