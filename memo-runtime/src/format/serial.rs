//! postcard, streamed: a value read from a reader (a chunked value)
//! without first collecting it, with nothing left over, and the LEB128
//! varints that frame iterator items. (Decoding from bytes is
//! `envelope::decode_exact`.)

use std::io::{self, Read};

use serde::de::DeserializeOwned;

use super::envelope::Invalid;

/// The read buffer of a streamed decode: postcard pulls most fields a byte
/// at a time, so each pull is a slice index rather than a trip through the
/// whole stream.
const READ_BUF: usize = 64 * 1024;

/// Deserializes exactly one `T` from a byte stream that must end right
/// after it, without first collecting the stream into one buffer: only the
/// bytes of the current string or byte field are held at a time (plus the
/// fields a type insists on borrowing, kept until the value is built), so a
/// large value loads in about its own size.
pub(crate) fn deserialize_from_reader<T: DeserializeOwned, R: Read>(
    reader: R,
) -> Result<T, Invalid> {
    let arena = typed_arena::Arena::new();
    let flavor = ReadFlavor {
        reader: io::BufReader::with_capacity(READ_BUF, reader),
        temp: Vec::new(),
        arena: &arena,
    };
    let mut deserializer = postcard::Deserializer::from_flavor(flavor);
    let value = T::deserialize(&mut deserializer).map_err(|e| Invalid::Decode(e.to_string()))?;
    let mut rest = deserializer
        .finalize()
        .map_err(|e| Invalid::Decode(e.to_string()))?;
    match io::BufRead::fill_buf(&mut rest) {
        Ok([]) => Ok(value),
        Ok(_) => Err(Invalid::Decode("bytes after the value".into())),
        Err(err) => Err(Invalid::Decode(err.to_string())),
    }
}

struct ReadFlavor<'de, R> {
    reader: R,
    temp: Vec<u8>,
    /// The bytes a type borrows during deserialization, which must outlive
    /// the read: each field's buffer moves in whole, uncopied. Only types
    /// that deserialize through `deserialize_str`/`deserialize_bytes`
    /// (rather than their owned variants) put anything here.
    arena: &'de typed_arena::Arena<Vec<u8>>,
}

impl<R: Read> ReadFlavor<'_, R> {
    /// Reads exactly `ct` bytes into `temp`, growing it only as bytes
    /// actually arrive, so a forged length cannot allocate ahead of data.
    fn fill_temp(&mut self, ct: usize) -> postcard::Result<()> {
        self.temp.clear();
        let read = (&mut self.reader)
            .take(ct as u64)
            .read_to_end(&mut self.temp)
            .map_err(|_| postcard::Error::DeserializeUnexpectedEnd)?;
        if read == ct {
            Ok(())
        } else {
            Err(postcard::Error::DeserializeUnexpectedEnd)
        }
    }
}

impl<'de, R: Read + 'de> postcard::de_flavors::Flavor<'de> for ReadFlavor<'de, R> {
    type Remainder = R;
    type Source = ();

    fn pop(&mut self) -> postcard::Result<u8> {
        let mut byte = [0u8; 1];
        self.reader
            .read_exact(&mut byte)
            .map_err(|_| postcard::Error::DeserializeUnexpectedEnd)?;
        Ok(byte[0])
    }

    fn try_take_n(&mut self, ct: usize) -> postcard::Result<&'de [u8]> {
        self.fill_temp(ct)?;
        Ok(self.arena.alloc(std::mem::take(&mut self.temp)).as_slice())
    }

    fn try_take_n_temp<'a>(&'a mut self, ct: usize) -> postcard::Result<&'a [u8]>
    where
        'de: 'a,
    {
        self.fill_temp(ct)?;
        Ok(&self.temp)
    }

    fn finalize(self) -> postcard::Result<R> {
        Ok(self.reader)
    }
}

/// `n` as a LEB128 varint (the framing of iterator items): the bytes and
/// how many of them are used, without allocating.
pub(crate) fn varint(mut n: u64) -> ([u8; 10], usize) {
    let mut out = [0u8; 10];
    let mut len = 0;
    while n >= 0x80 {
        out[len] = (n as u8) | 0x80;
        n >>= 7;
        len += 1;
    }
    out[len] = n as u8;
    (out, len + 1)
}

/// Appends `n` as a LEB128 varint.
#[cfg(any(test, feature = "__fuzz"))]
pub(crate) fn write_varint(n: u64, out: &mut Vec<u8>) {
    let (bytes, len) = varint(n);
    out.extend_from_slice(&bytes[..len]);
}

/// Reads a LEB128 varint; `Ok(None)` at a clean end of stream.
pub(crate) fn read_varint(reader: &mut impl Read) -> io::Result<Option<u64>> {
    let mut n: u64 = 0;
    for i in 0..10 {
        let mut byte = [0u8; 1];
        if reader.read(&mut byte)? == 0 {
            return if i == 0 {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated varint",
                ))
            };
        }
        n |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            return Ok(Some(n));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "varint too long",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Profile {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    fn profile() -> Profile {
        Profile {
            id: 42,
            name: "Ada".into(),
            tags: vec!["admin".into(), "ops".into()],
        }
    }

    #[test]
    fn streaming_deserialization_matches_from_bytes() {
        let bytes = postcard::to_stdvec(&profile()).unwrap();
        let value: Profile = deserialize_from_reader(&bytes[..]).unwrap();
        assert_eq!(value, profile());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(deserialize_from_reader::<Profile, _>(&longer[..]).is_err());
        assert!(deserialize_from_reader::<Profile, _>(&bytes[..bytes.len() - 1]).is_err());
        // A type that borrows through deserialize_bytes/str still loads.
        let text = postcard::to_stdvec(&std::net::Ipv4Addr::new(1, 2, 3, 4)).unwrap();
        let ip: std::net::Ipv4Addr = deserialize_from_reader(&text[..]).unwrap();
        assert_eq!(ip, std::net::Ipv4Addr::new(1, 2, 3, 4));
        let borrowed = postcard::to_stdvec(&std::borrow::Cow::Borrowed("text")).unwrap();
        let cow: std::borrow::Cow<'static, str> = deserialize_from_reader(&borrowed[..]).unwrap();
        assert_eq!(cow, "text");
    }

    /// A type that insists on borrowing: it asks for `deserialize_str` and
    /// `deserialize_bytes`, which hand out data borrowed from the input
    /// (the arena, when reading from a stream).
    #[derive(Debug, PartialEq)]
    struct Borrowing(String, Vec<u8>);

    impl<'de> Deserialize<'de> for Borrowing {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Text;
            impl serde::de::Visitor<'_> for Text {
                type Value = String;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a string")
                }
                fn visit_str<E>(self, v: &str) -> Result<String, E> {
                    Ok(v.to_owned())
                }
            }
            struct Bytes;
            impl serde::de::Visitor<'_> for Bytes {
                type Value = Vec<u8>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                    Ok(v.to_vec())
                }
            }
            struct Pair;
            impl<'de> serde::de::Visitor<'de> for Pair {
                type Value = Borrowing;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a pair")
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<Borrowing, A::Error> {
                    struct S;
                    impl<'de> serde::de::DeserializeSeed<'de> for S {
                        type Value = String;
                        fn deserialize<D: serde::Deserializer<'de>>(
                            self,
                            d: D,
                        ) -> Result<String, D::Error> {
                            d.deserialize_str(Text)
                        }
                    }
                    struct B;
                    impl<'de> serde::de::DeserializeSeed<'de> for B {
                        type Value = Vec<u8>;
                        fn deserialize<D: serde::Deserializer<'de>>(
                            self,
                            d: D,
                        ) -> Result<Vec<u8>, D::Error> {
                            d.deserialize_bytes(Bytes)
                        }
                    }
                    let text = seq.next_element_seed(S)?;
                    let bytes = seq.next_element_seed(B)?;
                    match (text, bytes) {
                        (Some(text), Some(bytes)) => Ok(Borrowing(text, bytes)),
                        _ => Err(serde::de::Error::invalid_length(0, &self)),
                    }
                }
            }
            d.deserialize_tuple(2, Pair)
        }
    }

    #[test]
    fn types_that_borrow_load_from_a_stream() {
        let mut bytes = Vec::new();
        write_varint(5, &mut bytes);
        bytes.extend_from_slice(b"hello");
        write_varint(3, &mut bytes);
        bytes.extend_from_slice(&[1, 2, 3]);
        let value: Borrowing = deserialize_from_reader(&bytes[..]).unwrap();
        assert_eq!(value, Borrowing("hello".into(), vec![1, 2, 3]));
        assert!(deserialize_from_reader::<Borrowing, _>(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn varints_round_trip_and_reject_garbage() {
        for n in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            write_varint(n, &mut buf);
            assert_eq!(read_varint(&mut &buf[..]).unwrap(), Some(n));
        }
        assert_eq!(read_varint(&mut &[][..]).unwrap(), None);
        assert!(read_varint(&mut &[0x80][..]).is_err());
        assert!(read_varint(&mut &[0xff; 11][..]).is_err());
    }
}
