//! Streaming zlib, in and out, a piece at a time. A chunked value or
//! iterator is compressed as it is written and decompressed as it is read,
//! one chunk after another, so neither side ever holds the whole stream:
//! memory stays bounded by the buffers here, whatever the value's size.
//!
//! Part of the format layer: bytes in, bytes out, no backend and no I/O;
//! the chunked writer and reader (`policy::stream`) drive it.
//!
//! The compressor is miniz_oxide, driven through flate2's streaming
//! `Compress` and `Decompress` on its `rust_backend`: the compressor memo
//! drove directly before, writing plain zlib, so entries stored then still
//! read and older builds read what this one stores. Level 10 is
//! miniz_oxide's own, past zlib's 9 (a C zlib backend would reject it).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::envelope::Invalid;

/// The largest piece of output handed to a sink at once.
const STREAM_BUF: usize = 64 * 1024;

/// Streaming zlib compression, output handed to a sink in pieces of at
/// most 64 KiB.
pub(crate) struct Deflater {
    compress: Compress,
    out: Box<[u8]>,
}

impl Deflater {
    /// A compressor at zlib `level` (0 to 10).
    pub(crate) fn new(level: u8) -> Self {
        Deflater {
            compress: Compress::new(Compression::new(level.into()), true),
            out: vec![0u8; STREAM_BUF].into_boxed_slice(),
        }
    }

    /// Compresses `input`, passing output to `sink`.
    pub(crate) fn write(&mut self, mut input: &[u8], sink: &mut dyn FnMut(&[u8])) {
        while !input.is_empty() {
            let (consumed, _) = self.step(input, FlushCompress::None, sink);
            input = &input[consumed..];
        }
    }

    /// Ends the stream, passing the remaining output to `sink`.
    pub(crate) fn finish(&mut self, sink: &mut dyn FnMut(&[u8])) {
        // Until the stream ends, or nothing more can come out of it.
        while let (_, Ok(Status::Ok)) = self.step(&[], FlushCompress::Finish, sink) {}
    }

    /// One call of the compressor, its output passed to `sink`: how much
    /// of `input` it consumed, and its status.
    fn step(
        &mut self,
        input: &[u8],
        flush: FlushCompress,
        sink: &mut dyn FnMut(&[u8]),
    ) -> (usize, Result<Status, flate2::CompressError>) {
        let (read, written) = (self.compress.total_in(), self.compress.total_out());
        let status = self.compress.compress(input, &mut self.out, flush);
        let written = (self.compress.total_out() - written) as usize;
        if written > 0 {
            sink(&self.out[..written]);
        }
        ((self.compress.total_in() - read) as usize, status)
    }
}

/// Streaming zlib decompression.
pub(crate) struct Inflater {
    decompress: Decompress,
    done: bool,
    pending: bool,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            decompress: Decompress::new(true),
            done: false,
            pending: false,
        }
    }
}

impl Inflater {
    /// Decompresses from `input` into `output`; returns `(consumed,
    /// written)`. After the end of the zlib stream, any further input is an
    /// error (trailing bytes).
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<(usize, usize), Invalid> {
        if self.done {
            return if input.is_empty() {
                Ok((0, 0))
            } else {
                Err(Invalid::Stream(
                    "bytes after the end of the zlib stream".into(),
                ))
            };
        }
        let (read, written) = (self.decompress.total_in(), self.decompress.total_out());
        let status = self
            .decompress
            .decompress(input, output, FlushDecompress::None)
            .map_err(|err| Invalid::Stream(format!("zlib: {err}")))?;
        let consumed = (self.decompress.total_in() - read) as usize;
        let written = (self.decompress.total_out() - written) as usize;
        match status {
            Status::StreamEnd => self.done = true,
            // `BufError`: no progress without more input or more room,
            // which the caller brings.
            Status::Ok | Status::BufError => {}
        }
        // A call that fills `output` may stop with decoded bytes still
        // inside the decoder (miniz_oxide stages them in its window), even
        // when it consumed all of `input`.
        self.pending = !self.done && !output.is_empty() && written == output.len();
        Ok((consumed, written))
    }

    /// Whether the decoder may still hold output from input it already
    /// consumed: the last call filled its output buffer. Such output comes
    /// out of a call with empty input; until it has, running out of input
    /// is not the end of the stream.
    pub(crate) fn pending(&self) -> bool {
        self.pending
    }

    /// Whether the zlib stream ended.
    pub(crate) fn finished(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The output buffer of the chunked reader (`policy::stream::read`),
    /// which a stream's end may fill exactly.
    const READER_BUF: usize = 64 * 1024;

    fn compress(data: &[u8], level: u8, piece: usize) -> Vec<u8> {
        let mut compressed = Vec::new();
        let mut deflater = Deflater::new(level);
        let mut sink = |out: &[u8]| {
            assert!(out.len() <= STREAM_BUF);
            compressed.extend_from_slice(out);
        };
        for piece in data.chunks(piece) {
            deflater.write(piece, &mut sink);
        }
        deflater.finish(&mut sink);
        compressed
    }

    /// Decompresses `compressed` as the chunked reader does: input in
    /// chunks of `chunk` bytes, output into a buffer of `READER_BUF`, and
    /// calls with empty input while the decoder holds output. Asserts that
    /// the stream ends with the last chunk.
    fn decompress_in_chunks(compressed: &[u8], chunk: usize) -> Vec<u8> {
        let mut inflater = Inflater::default();
        let mut buf = vec![0u8; READER_BUF];
        let mut plain = Vec::new();
        let mut chunks = compressed.chunks(chunk);
        let mut input: &[u8] = &[];
        loop {
            if input.is_empty() && !inflater.pending() {
                match chunks.next() {
                    Some(next) => input = next,
                    None => break,
                }
            }
            let (used, written) = inflater.inflate(input, &mut buf).unwrap();
            assert!(used > 0 || written > 0 || inflater.finished(), "stuck");
            input = &input[used..];
            plain.extend_from_slice(&buf[..written]);
        }
        assert!(inflater.finished(), "stream truncated at {}", plain.len());
        plain
    }

    /// Bytes that zlib cannot shrink (xorshift).
    fn noise(len: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ len as u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn compression_round_trips_in_small_pieces() {
        let input: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut compressed = Vec::new();
        let mut deflater = Deflater::new(1);
        for piece in input.chunks(777) {
            deflater.write(piece, &mut |out| compressed.extend_from_slice(out));
        }
        deflater.finish(&mut |out| compressed.extend_from_slice(out));
        assert!(compressed.len() < input.len() / 4);
        let mut inflater = Inflater::default();
        let mut output = Vec::new();
        let mut buf = [0u8; 1000];
        let mut rest = &compressed[..];
        while !inflater.finished() {
            let (used, written) = inflater
                .inflate(&rest[..rest.len().min(333)], &mut buf)
                .unwrap();
            rest = &rest[used..];
            output.extend_from_slice(&buf[..written]);
        }
        assert_eq!(output, input);
        assert!(inflater.inflate(b"x", &mut buf).is_err());
    }

    #[test]
    fn output_held_in_the_decoder_comes_out_with_empty_input() {
        // Highly compressible input: a few bytes of zlib stand for far more
        // output than the buffer takes, so the decoder consumes all of its
        // input long before it has handed out everything.
        let input = vec![b'z'; 300_000];
        let mut compressed = Vec::new();
        let mut deflater = Deflater::new(1);
        deflater.write(&input, &mut |out| compressed.extend_from_slice(out));
        deflater.finish(&mut |out| compressed.extend_from_slice(out));
        let mut inflater = Inflater::default();
        let mut buf = vec![0u8; 4096];
        let mut rest = &compressed[..];
        let mut total = 0;
        while !rest.is_empty() {
            let (used, written) = inflater.inflate(rest, &mut buf).unwrap();
            rest = &rest[used..];
            total += written;
        }
        // All input consumed, and much of the output still to come.
        assert!(inflater.pending() && !inflater.finished());
        assert!(total < input.len());
        while inflater.pending() {
            let (used, written) = inflater.inflate(&[], &mut buf).unwrap();
            assert_eq!(used, 0);
            assert!(buf[..written].iter().all(|&b| b == b'z'));
            total += written;
        }
        assert!(inflater.finished());
        assert_eq!(total, input.len());
    }

    /// Streams whose plain length ends just before, at and just after
    /// each multiple of the reader's buffer, compressible or not, at the
    /// default level and at miniz_oxide's level 10, read in chunks smaller
    /// and larger than the buffer.
    #[test]
    fn sizes_around_the_reader_s_buffer_round_trip() {
        let mut sizes = vec![0, 1];
        for base in (1..=4).map(|n| n * READER_BUF) {
            sizes.extend([base - 1, base, base + 1]);
        }
        for &size in &sizes {
            let patterned: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            for data in [patterned, noise(size)] {
                for level in [1, 10] {
                    let compressed = compress(&data, level, 10_007);
                    for chunk in [1024, READER_BUF + 1000] {
                        let plain = decompress_in_chunks(&compressed, chunk);
                        assert!(
                            plain == data,
                            "size {size}, level {level}, chunks of {chunk}"
                        );
                    }
                }
            }
        }
    }

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
            .collect()
    }

    /// Streams that the compressor before flate2 (miniz_oxide driven
    /// directly) stored still decompress.
    #[test]
    fn streams_stored_before_flate2_still_read() {
        let text = b"memo stores values in a shared cache; memo stores them compressed. memo!";
        // Level 1, the default.
        let stored = unhex(concat!(
            "78014d8bc10d80300cc45639166001a689d2938244086a4ae76fd5575f7ed876",
            "7a205b5426ba3cffc4fd42902695052a6abcb057cde8d0f06f2ec9722e790cc8",
            "841a4b",
        ));
        assert_eq!(decompress_in_chunks(&stored, 1024), text);

        // Level 0, stored as is, under a header that declares the smallest
        // window (flate2's miniz_oxide writes another).
        let stored = unhex(concat!(
            "081d014800b7ff6d656d6f2073746f7265732076616c75657320696e20612073",
            "68617265642063616368653b206d656d6f2073746f726573207468656d20636f",
            "6d707265737365642e206d656d6f21c8841a4b",
        ));
        assert_eq!(decompress_in_chunks(&stored, 1024), text);

        // Level 6, 70,144 bytes: past the reader's buffer.
        let mut long = text.to_vec();
        long.extend(std::iter::repeat_n(b'z', 70_000));
        long.extend(text.iter().rev());
        let stored = unhex(concat!(
            "789cedcac10dc2301004c0568e0668806a2ce72423618ce2c083ea89f24a013c",
            "673eabd56ecf3e626e63cd199ff278ef717f4689d9ca9a4bd4525bdea29f5e5b",
            "cb1e75f4d75e662ed763bc7c0100000000000000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "00000000000000000000000000000080bfbb8c9e3dae4bce99ebab8f1a3ddb16",
            "7b19db8c63bc65aba5c6926b69334a3ceffbfc7e94cff9f503da738b93",
        ));
        for chunk in [64, 1024] {
            assert_eq!(decompress_in_chunks(&stored, chunk), long);
        }
    }

    #[test]
    fn a_corrupt_stream_is_invalid() {
        let mut compressed = compress(&noise(5000), 1, 5000);
        compressed[100] ^= 0xff;
        let mut inflater = Inflater::default();
        let mut buf = vec![0u8; READER_BUF];
        let mut rest = &compressed[..];
        let error = loop {
            match inflater.inflate(rest, &mut buf) {
                Ok((used, _)) if used > 0 => rest = &rest[used..],
                Ok(_) => panic!("corruption not noticed"),
                Err(error) => break error,
            }
        };
        assert!(matches!(error, Invalid::Stream(_)), "{error:?}");
    }
}
