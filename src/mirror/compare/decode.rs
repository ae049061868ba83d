//! Undoing a captured body's `Content-Encoding` before it is compared
//! (docs/comparing.md, "What is compared"), as pure functions over bytes.
//!
//! This module owns which codings are decoded — `gzip` (and `x-gzip`), `deflate` and
//! `br` (RFC 9110 §8.4.1) — and decoding within a limit of decoded bytes. It does not
//! capture bodies ([`super::verdict::Capture`]), hold them in the byte budget
//! ([`super::capture`]) or compare them.
//!
//! A decompression bomb costs no more than the limit: the decoder is read a chunk at a
//! time and given up as soon as its output would pass the limit, and the output's
//! allocation never grows past the limit either. The decoders' own state is bounded by
//! their formats: 32 KiB of window for gzip and deflate, at most 16 MiB for `br`, for a
//! stream whose header asks for that window (RFC 7932 §9.1).
//!
//! `zstd` is not decoded: its decoders are a C library or a sizeable crate, for a coding
//! browsers only recently send; a `zstd` body is compared as sent.

use std::io::{self, Read};

use http::HeaderMap;
use http::header::CONTENT_ENCODING;

/// Size of the chunks read from a decoder.
const CHUNK: usize = 16 * 1024;

/// A content coding that is decoded before comparing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip` or `x-gzip` (RFC 9110 §8.4.1.3): one gzip member or several in a row.
    Gzip,
    /// `deflate` (RFC 9110 §8.4.1.2): a zlib stream, or a raw deflate stream as some
    /// servers send instead, told apart by the zlib header.
    Deflate,
    /// `br` (RFC 7932).
    Brotli,
}

impl Coding {
    /// The coding of an answer with these headers, when it is one that is decoded: the
    /// `Content-Encoding` values (every field line, comma-separated, case-insensitive)
    /// less `identity`, if exactly one is left and it is known. `None` otherwise: no
    /// coding, an unknown one, or several applied in turn (compared as sent).
    pub fn of(headers: &HeaderMap) -> Option<Coding> {
        let mut found = None;
        for value in headers.get_all(CONTENT_ENCODING) {
            let Ok(value) = value.to_str() else {
                return None;
            };
            for name in value.split(',').map(str::trim) {
                if name.is_empty() || name.eq_ignore_ascii_case("identity") {
                    continue;
                }
                if found.is_some() {
                    return None;
                }
                found = Some(name);
            }
        }
        let name = found?;
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else if name.eq_ignore_ascii_case("deflate") {
            Some(Coding::Deflate)
        } else if name.eq_ignore_ascii_case("br") {
            Some(Coding::Brotli)
        } else {
            None
        }
    }
}

/// What decoding gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The whole decoded body, at most the limit.
    Whole(Vec<u8>),
    /// The decoded body would pass the limit; nothing is kept.
    TooLarge,
    /// Not a valid stream of that coding (or cut short).
    Invalid,
    /// `reserve` refused memory for the output.
    OverBudget,
}

/// Decodes `encoded` into at most `limit` bytes. `reserve(n)` is asked before the
/// output's allocation grows by `n` bytes; the amounts it granted add up to the
/// allocation of the returned vector.
pub fn decode(
    coding: Coding,
    encoded: &[u8],
    limit: usize,
    reserve: &mut dyn FnMut(usize) -> bool,
) -> Decoded {
    match coding {
        Coding::Gzip => read_within(flate2::read::MultiGzDecoder::new(encoded), limit, reserve),
        Coding::Deflate if is_zlib(encoded) => {
            read_within(flate2::read::ZlibDecoder::new(encoded), limit, reserve)
        }
        Coding::Deflate => read_within(flate2::read::DeflateDecoder::new(encoded), limit, reserve),
        Coding::Brotli => read_within(
            brotli_decompressor::Decompressor::new(encoded, CHUNK),
            limit,
            reserve,
        ),
    }
}

/// Whether `bytes` start with a zlib header (RFC 1950 §2.2): compression method 8
/// (deflate), a window of at most 32 KiB, and a check that makes the first two bytes a
/// multiple of 31. A raw deflate stream passes this by chance only rarely.
fn is_zlib(bytes: &[u8]) -> bool {
    match bytes {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

/// Reads `reader` to its end, keeping at most `limit` bytes (see [`decode`]).
fn read_within(
    mut reader: impl Read,
    limit: usize,
    reserve: &mut dyn FnMut(usize) -> bool,
) -> Decoded {
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = vec![0; CHUNK.min(limit.saturating_add(1))];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Decoded::Whole(out),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Decoded::Invalid,
        };
        let needed = out.len() + n;
        if needed > limit {
            return Decoded::TooLarge;
        }
        if needed > out.capacity() {
            // Geometric growth, never past the limit, as `Capture` does.
            let target = needed.max(out.capacity().saturating_mul(2)).min(limit);
            if !reserve(target - out.capacity()) {
                return Decoded::OverBudget;
            }
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Decodes with a budget that grants everything, checking that the reservations
    /// add up to the output's allocation.
    fn decoded(coding: Coding, encoded: &[u8], limit: usize) -> Decoded {
        let mut reserved = 0;
        let result = decode(coding, encoded, limit, &mut |n| {
            reserved += n;
            true
        });
        if let Decoded::Whole(out) = &result {
            assert_eq!(out.capacity(), reserved);
            assert!(out.capacity() <= limit);
        }
        assert!(reserved <= limit, "{reserved} > {limit}");
        result
    }

    /// `{"a":1,"b":[true,null]}` compressed by `brotli -c` (the brotli 1.0.9 tool).
    pub(crate) const BR_JSON: &[u8] = &[
        0x0f, 0x0b, 0x80, 0x7b, 0x22, 0x61, 0x22, 0x3a, 0x31, 0x2c, 0x22, 0x62, 0x22, 0x3a, 0x5b,
        0x74, 0x72, 0x75, 0x65, 0x2c, 0x6e, 0x75, 0x6c, 0x6c, 0x5d, 0x7d, 0x03,
    ];

    /// 64 MiB of zeros compressed by `brotli -c -q 11` (the brotli 1.0.9 tool): 54 bytes.
    const BR_BOMB: &[u8] = &[
        0xcf, 0xff, 0xff, 0x7f, 0xf8, 0x27, 0x00, 0xe2, 0xb1, 0x40, 0x20, 0xf7, 0xfe, 0x9f, 0xff,
        0xff, 0xff, 0xf0, 0x4f, 0x00, 0xc4, 0x61, 0x01, 0x80, 0xee, 0xfd, 0x3f, 0xff, 0xff, 0xff,
        0xe1, 0x9f, 0x00, 0x88, 0xc3, 0x22, 0x00, 0xdd, 0xfb, 0x7f, 0xfe, 0xff, 0xff, 0xc3, 0x3f,
        0x01, 0x10, 0x87, 0x05, 0x00, 0xba, 0xf7, 0xff, 0x03,
    ];

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(CONTENT_ENCODING, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_coding_is_read_from_content_encoding() {
        for (values, want) in [
            (&[][..], None),
            (&["gzip"][..], Some(Coding::Gzip)),
            (&["GZip"], Some(Coding::Gzip)),
            (&["x-gzip"], Some(Coding::Gzip)),
            (&["deflate"], Some(Coding::Deflate)),
            (&["br"], Some(Coding::Brotli)),
            (&[" br "], Some(Coding::Brotli)),
            (&["identity"], None),
            (&["identity, gzip"], Some(Coding::Gzip)),
            (&["identity", "br"], Some(Coding::Brotli)),
            (&["zstd"], None),
            (&["compress"], None),
            (&["gzip, br"], None),
            (&["gzip", "gzip"], None),
            (&[""], None),
        ] {
            assert_eq!(Coding::of(&headers(values)), want, "{values:?}");
        }
    }

    #[test]
    fn gzip_deflate_and_br_decode() {
        let body = br#"{"a":1,"b":[true,null]}"#;
        assert_eq!(
            decoded(Coding::Gzip, &gzip(body), 1000),
            Decoded::Whole(body.to_vec())
        );
        // Two gzip members in a row are one body (RFC 1952 §2.2).
        let mut two = gzip(b"ab");
        two.extend(gzip(b"cd"));
        assert_eq!(
            decoded(Coding::Gzip, &two, 1000),
            Decoded::Whole(b"abcd".to_vec())
        );
        // deflate: zlib as RFC 9110 says, or raw as some servers send.
        assert!(is_zlib(&zlib(body)));
        assert!(!is_zlib(&raw_deflate(body)));
        for encoded in [zlib(body), raw_deflate(body)] {
            assert_eq!(
                decoded(Coding::Deflate, &encoded, 1000),
                Decoded::Whole(body.to_vec())
            );
        }
        assert_eq!(
            decoded(Coding::Brotli, BR_JSON, 1000),
            Decoded::Whole(body.to_vec())
        );
    }

    #[test]
    fn a_body_that_does_not_decode_is_invalid() {
        let body = b"not compressed at all";
        for coding in [Coding::Gzip, Coding::Deflate, Coding::Brotli] {
            assert_eq!(decoded(coding, body, 1000), Decoded::Invalid, "{coding:?}");
        }
        // Cut short.
        let cut = gzip(&[7; 5000]);
        assert_eq!(
            decoded(Coding::Gzip, &cut[..cut.len() / 2], 100_000),
            Decoded::Invalid
        );
    }

    #[test]
    fn exactly_the_limit_fits_and_one_byte_more_does_not() {
        let body = vec![b'x'; 40_000];
        let encoded = gzip(&body);
        assert_eq!(
            decoded(Coding::Gzip, &encoded, 40_000),
            Decoded::Whole(body.clone())
        );
        assert_eq!(decoded(Coding::Gzip, &encoded, 39_999), Decoded::TooLarge);
        assert_eq!(decoded(Coding::Gzip, &encoded, 0), Decoded::TooLarge);
        assert_eq!(
            decoded(Coding::Gzip, &gzip(b""), 0),
            Decoded::Whole(Vec::new())
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        // 256 MiB of zeros in about 256 KiB of gzip (256 members of 1 MiB each, which
        // is quicker to make than one); only the first MiB is decoded.
        let member = gzip(&vec![0; 1 << 20]);
        let bomb = member.repeat(256);
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        assert_eq!(decoded(Coding::Gzip, &bomb, 1 << 20), Decoded::TooLarge);
        assert_eq!(decoded(Coding::Brotli, BR_BOMB, 1 << 20), Decoded::TooLarge);
        // Giving up early bounds the time too: little of the input is ever read.
        let mut read = 0;
        let counting = Counting {
            inner: &bomb[..],
            read: &mut read,
        };
        let result = read_within(
            flate2::read::MultiGzDecoder::new(counting),
            1 << 20,
            &mut |_| true,
        );
        assert_eq!(result, Decoded::TooLarge);
        assert!(read < bomb.len() / 4, "{read} of {} bytes read", bomb.len());
    }

    /// A reader that counts the bytes read through it.
    struct Counting<'a> {
        inner: &'a [u8],
        read: &'a mut usize,
    }

    impl Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            *self.read += n;
            Ok(n)
        }
    }

    #[test]
    fn a_refused_reservation_stops_decoding() {
        let encoded = gzip(&[b'y'; 100_000]);
        let mut granted = 0;
        let result = decode(Coding::Gzip, &encoded, 1 << 20, &mut |n| {
            if granted + n > 50_000 {
                return false;
            }
            granted += n;
            true
        });
        assert_eq!(result, Decoded::OverBudget);
        assert!(granted <= 50_000);
    }
}
