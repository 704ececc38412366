//! Streaming zlib (miniz_oxide), in and out, a piece at a time, so that a
//! chunked value is compressed and decompressed in bounded memory.

use miniz_oxide::deflate::core::CompressorOxide;
use miniz_oxide::inflate::stream::InflateState;
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

use super::envelope::Invalid;

/// Streaming zlib compression (miniz_oxide), output handed to a sink in
/// pieces of at most 64 KiB.
pub(crate) struct Deflater {
    compressor: Box<CompressorOxide>,
    out: Box<[u8]>,
}

/// The largest piece of output handed to a sink at once.
const STREAM_BUF: usize = 64 * 1024;

impl Deflater {
    /// A compressor at zlib `level` (0 to 10).
    pub(crate) fn new(level: u8) -> Self {
        let mut compressor = Box::<CompressorOxide>::default();
        compressor.set_format_and_level(DataFormat::Zlib, level);
        Deflater {
            compressor,
            out: vec![0u8; STREAM_BUF].into_boxed_slice(),
        }
    }

    /// Compresses `input`, passing output to `sink`.
    pub(crate) fn write(&mut self, mut input: &[u8], sink: &mut dyn FnMut(&[u8])) {
        while !input.is_empty() {
            let res = miniz_oxide::deflate::stream::deflate(
                &mut self.compressor,
                input,
                &mut self.out,
                MZFlush::None,
            );
            input = &input[res.bytes_consumed..];
            if res.bytes_written > 0 {
                sink(&self.out[..res.bytes_written]);
            }
        }
    }

    /// Ends the stream, passing the remaining output to `sink`.
    pub(crate) fn finish(&mut self, sink: &mut dyn FnMut(&[u8])) {
        loop {
            let res = miniz_oxide::deflate::stream::deflate(
                &mut self.compressor,
                &[],
                &mut self.out,
                MZFlush::Finish,
            );
            if res.bytes_written > 0 {
                sink(&self.out[..res.bytes_written]);
            }
            if matches!(res.status, Ok(MZStatus::StreamEnd)) || res.status.is_err() {
                break;
            }
        }
    }
}

/// Streaming zlib decompression (miniz_oxide).
pub(crate) struct Inflater {
    state: Box<InflateState>,
    done: bool,
    pending: bool,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            state: InflateState::new_boxed(DataFormat::Zlib),
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
        let res =
            miniz_oxide::inflate::stream::inflate(&mut self.state, input, output, MZFlush::None);
        match res.status {
            Ok(MZStatus::StreamEnd) => self.done = true,
            Ok(_) | Err(MZError::Buf) => {}
            Err(err) => return Err(Invalid::Stream(format!("zlib: {err:?}"))),
        }
        // A call that fills `output` may stop with decoded bytes still
        // inside the decoder (miniz_oxide stages them in its window), even
        // when it consumed all of `input`.
        self.pending = !self.done && !output.is_empty() && res.bytes_written == output.len();
        Ok((res.bytes_consumed, res.bytes_written))
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
}
