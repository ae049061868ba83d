//! What comparing needs to know of gRPC answers (docs/comparing.md, "gRPC answers"), as
//! pure functions over headers and bytes: which answers are gRPC, their status and
//! status message, the messages of a body (the gRPC length-prefixed framing), compressed
//! messages made plain, and the `--grpc-descriptors` set that turns a method's output
//! messages into JSON.
//!
//! This module does not decide what matches ([`super::verdict`] does) nor hold anything
//! in the byte budget (the caller passes `reserve`, as for [`super::decode`]).
//!
//! The framing is the one the gRPC over HTTP/2 protocol defines ("Length-Prefixed-Message"
//! in grpc/grpc's `doc/PROTOCOL-HTTP2.md`): each message is one byte of compressed flag,
//! four bytes of big-endian length, then the message.

use std::io::Read;
use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderValue};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::Value;

use super::decode::{self, Coding, Decoded};

/// Bytes before each message: the compressed flag and the length.
pub const PREFIX: usize = 5;

/// A descriptor set larger than this is refused rather than read (a path to a device
/// or a wrong file). Real sets are kilobytes to a few megabytes.
pub const MAX_DESCRIPTORS_SIZE: u64 = 64 << 20;

/// Whether `headers` are those of a gRPC answer: `Content-Type` `application/grpc`,
/// alone or followed by `+` (`application/grpc+proto`) or `;` (RFC 9110 §8.3.1).
/// gRPC-Web (`application/grpc-web…`) carries its trailers in the body and is not
/// compared as gRPC.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    crate::headers::is_grpc(headers)
}

/// A header of the gRPC status: from the trailers, or from the headers when there are
/// none (a Trailers-Only answer sends its status in its only header block).
pub fn status_field<'a>(
    headers: &'a HeaderMap,
    trailers: &'a HeaderMap,
    name: &str,
) -> Option<&'a HeaderValue> {
    trailers.get(name).or_else(|| headers.get(name))
}

/// `grpc-message` as its sender meant it: percent-decoded (the gRPC protocol's
/// "Percent-Encoded" rule), a `%` not followed by two hex digits kept as it is, as the
/// protocol asks of decoders. Absent reads as empty, as gRPC clients read it.
pub fn status_message(value: Option<&HeaderValue>) -> Vec<u8> {
    let Some(value) = value else {
        return Vec::new();
    };
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                // Two hex digits make at most 255.
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// One message of a gRPC body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The compressed flag: the message is compressed with the answer's `grpc-encoding`.
    pub compressed: bool,
    pub message: &'a [u8],
}

/// The messages of a gRPC body, in order; `None` when the bytes are not a whole number
/// of well-formed messages (cut short, or a flag other than 0 or 1).
pub fn frames(mut body: &[u8]) -> Option<Vec<Frame<'_>>> {
    let mut frames = Vec::new();
    while !body.is_empty() {
        let (prefix, rest) = body.split_first_chunk::<PREFIX>()?;
        let compressed = match prefix[0] {
            0 => false,
            1 => true,
            _ => return None,
        };
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
        let len = usize::try_from(len).ok()?;
        if rest.len() < len {
            return None;
        }
        let (message, rest) = rest.split_at(len);
        frames.push(Frame {
            compressed,
            message,
        });
        body = rest;
    }
    Some(frames)
}

/// The compression of an answer's messages (`grpc-encoding`), when it is one that is
/// decoded: `gzip`, or `deflate` (zlib, as the gRPC compression spec names it).
pub fn coding(headers: &HeaderMap) -> Option<Coding> {
    let value = headers.get("grpc-encoding")?.to_str().ok()?.trim();
    if value.eq_ignore_ascii_case("gzip") {
        Some(Coding::Gzip)
    } else if value.eq_ignore_ascii_case("deflate") {
        Some(Coding::Deflate)
    } else {
        None
    }
}

/// What [`decompress`] gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Decompressed {
    /// Nothing to do: no compressed message, or an encoding that is not decoded, or
    /// a body that is not well-formed gRPC messages.
    AsIs,
    /// The same messages, each compressed one replaced by its plain bytes with its
    /// flag cleared. A message whose bytes do not decode is kept as it was sent.
    Plain(Vec<u8>),
    /// The plain messages would pass the limit.
    TooLarge,
    /// `reserve` refused memory.
    OverBudget,
}

/// Rewrites a gRPC `body` with every compressed message decoded with `coding`, into
/// at most `limit` bytes in all. `reserve(n)` is asked before memory grows by `n`
/// bytes; what it granted adds up to at least the returned body's allocation (the
/// plain form of one message is also held while it is copied).
pub fn decompress(
    body: &[u8],
    coding: Coding,
    limit: usize,
    reserve: &mut dyn FnMut(usize) -> bool,
) -> Decompressed {
    let Some(frames) = frames(body) else {
        return Decompressed::AsIs;
    };
    if !frames.iter().any(|f| f.compressed) {
        return Decompressed::AsIs;
    }
    let mut out: Vec<u8> = Vec::new();
    for frame in frames {
        let room = limit.saturating_sub(out.len() + PREFIX);
        let plain = if frame.compressed {
            match decode::decode(coding, frame.message, room, reserve) {
                Decoded::Whole(plain) => Some(plain),
                Decoded::Invalid => None,
                Decoded::TooLarge => return Decompressed::TooLarge,
                Decoded::OverBudget => return Decompressed::OverBudget,
            }
        } else {
            None
        };
        let (flag, message) = match &plain {
            Some(plain) => (0, plain.as_slice()),
            None => (u8::from(frame.compressed), frame.message),
        };
        let needed = out.len() + PREFIX + message.len();
        if needed > limit {
            return Decompressed::TooLarge;
        }
        if needed > out.capacity() {
            let target = needed.max(out.capacity().saturating_mul(2)).min(limit);
            if !reserve(target - out.capacity()) {
                return Decompressed::OverBudget;
            }
            out.reserve_exact(target - out.len());
        }
        // `needed` fits in `limit`, so the length fits in the 4 bytes the frame has.
        let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
        out.push(flag);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(message);
    }
    Decompressed::Plain(out)
}

/// A `--grpc-descriptors` file that cannot be used. Display is the whole one-line
/// start-up message, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorsError {
    #[error("cannot read --grpc-descriptors file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--grpc-descriptors file {} is larger than {MAX_DESCRIPTORS_SIZE} bytes", .path.display())]
    TooLarge { path: PathBuf },
    #[error(
        "--grpc-descriptors file {} is not a protobuf FileDescriptorSet (as `protoc --descriptor_set_out` or `buf build -o` writes it): {message}",
        .path.display()
    )]
    Invalid { path: PathBuf, message: String },
    #[error(
        "--grpc-descriptors file {} describes no gRPC service (build it from the .proto files that declare the services)",
        .path.display()
    )]
    NoService { path: PathBuf },
}

/// The services of a `--grpc-descriptors` file, to decode their answers' messages.
#[derive(Debug, Clone)]
pub struct Descriptors {
    pool: DescriptorPool,
}

impl Descriptors {
    /// Reads and checks a `FileDescriptorSet` file.
    ///
    /// # Errors
    /// The file cannot be read, is too large, is not a valid descriptor set (including
    /// one whose files import files it does not hold), or declares no service.
    pub fn load(path: &Path) -> Result<Self, DescriptorsError> {
        let read = |source| DescriptorsError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let mut bytes = Vec::new();
        file.take(MAX_DESCRIPTORS_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(read)?;
        if bytes.len() as u64 > MAX_DESCRIPTORS_SIZE {
            return Err(DescriptorsError::TooLarge {
                path: path.to_owned(),
            });
        }
        Self::decode(&bytes).map_err(|err| match err {
            Some(message) => DescriptorsError::Invalid {
                path: path.to_owned(),
                message,
            },
            None => DescriptorsError::NoService {
                path: path.to_owned(),
            },
        })
    }

    /// Decodes a `FileDescriptorSet`: the error's message (on one line), or `None`
    /// when it is valid but declares no service.
    pub fn decode(bytes: &[u8]) -> Result<Self, Option<String>> {
        let pool = DescriptorPool::decode(bytes).map_err(|err| {
            Some(
                err.to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })?;
        if pool.services().len() == 0 {
            return Err(None);
        }
        Ok(Self { pool })
    }

    /// The output message of the method a request path names (`/package.Service/Method`,
    /// as gRPC sends it), when the set describes it.
    pub fn output(&self, path: &str) -> Option<MessageDescriptor> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let service = self.pool.get_service_by_name(service)?;
        let method = service.methods().find(|m| m.name() == method)?;
        Some(method.output())
    }
}

/// One message as JSON (the protobuf JSON mapping with the field names the `.proto`
/// file writes, so `ignore=` pointers read like the `.proto`; 64-bit integers as
/// numbers, compared exactly; fields at their default value left out, as proto3 does
/// on the wire). `None` when the bytes are not a message of that type.
pub fn to_json(output: &MessageDescriptor, message: &[u8]) -> Option<Value> {
    let message = DynamicMessage::decode(output.clone(), message).ok()?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    // Fails only for what JSON cannot say (an `Any` of a type the set does not know).
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use prost_reflect::prost::Message;
    use prost_reflect::prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
        MethodDescriptorProto, ServiceDescriptorProto, field_descriptor_proto,
    };
    use std::io::Write;

    /// A set with `package echo; service Echo { rpc Say(Ask) returns (Reply); }`,
    /// `Reply { string message = 1; int64 id = 2; repeated Item items = 3; }` and
    /// `Item { string name = 1; uint64 at = 2; }`.
    pub(crate) fn echo_set() -> Vec<u8> {
        use field_descriptor_proto::{Label, Type};
        let field = |name: &str, number: i32, kind: Type, label: Label, type_name: &str| {
            FieldDescriptorProto {
                name: Some(name.into()),
                number: Some(number),
                r#type: Some(kind as i32),
                label: Some(label as i32),
                type_name: (!type_name.is_empty()).then(|| type_name.into()),
                ..Default::default()
            }
        };
        let message = |name: &str, fields: Vec<FieldDescriptorProto>| DescriptorProto {
            name: Some(name.into()),
            field: fields,
            ..Default::default()
        };
        let file = FileDescriptorProto {
            name: Some("echo.proto".into()),
            package: Some("echo".into()),
            syntax: Some("proto3".into()),
            message_type: vec![
                message(
                    "Ask",
                    vec![field("message", 1, Type::String, Label::Optional, "")],
                ),
                message(
                    "Reply",
                    vec![
                        field("message", 1, Type::String, Label::Optional, ""),
                        field("id", 2, Type::Int64, Label::Optional, ""),
                        field("items", 3, Type::Message, Label::Repeated, ".echo.Item"),
                    ],
                ),
                message(
                    "Item",
                    vec![
                        field("name", 1, Type::String, Label::Optional, ""),
                        field("at", 2, Type::Uint64, Label::Optional, ""),
                    ],
                ),
            ],
            service: vec![ServiceDescriptorProto {
                name: Some("Echo".into()),
                method: vec![MethodDescriptorProto {
                    name: Some("Say".into()),
                    input_type: Some(".echo.Ask".into()),
                    output_type: Some(".echo.Reply".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        FileDescriptorSet { file: vec![file] }.encode_to_vec()
    }

    /// A `Reply` message's bytes: `message`, `id`, then `items` as (name, at).
    pub(crate) fn reply(message: &str, id: i64, items: &[(&str, u64)]) -> Vec<u8> {
        let descriptors = Descriptors::decode(&echo_set()).unwrap();
        let output = descriptors.output("/echo.Echo/Say").unwrap();
        let mut value = serde_json::json!({ "message": message, "id": id.to_string() });
        value["items"] = items
            .iter()
            .map(|(name, at)| serde_json::json!({ "name": name, "at": at.to_string() }))
            .collect();
        let json = serde_json::to_string(&value).unwrap();
        let mut de = serde_json::Deserializer::from_str(&json);
        DynamicMessage::deserialize(output, &mut de)
            .unwrap()
            .encode_to_vec()
    }

    /// A gRPC body of these messages, each `(compressed, bytes)`.
    pub(crate) fn body(messages: &[(bool, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (compressed, message) in messages {
            out.push(u8::from(*compressed));
            out.extend_from_slice(&(message.len() as u32).to_be_bytes());
            out.extend_from_slice(message);
        }
        out
    }

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn grpc_content_types() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc; charset=utf-8",
        ] {
            assert!(is_grpc(&headers(&[("content-type", yes)])), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/grpc-web-text",
            "application/grpcx",
            "application/json",
            "application/gr",
        ] {
            assert!(!is_grpc(&headers(&[("content-type", no)])), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn status_comes_from_the_trailers_else_the_headers() {
        let trailers = headers(&[("grpc-status", "5")]);
        let only = headers(&[("grpc-status", "14")]);
        assert_eq!(status_field(&only, &trailers, "grpc-status").unwrap(), "5");
        assert_eq!(
            status_field(&only, &HeaderMap::new(), "grpc-status").unwrap(),
            "14"
        );
        assert_eq!(
            status_field(&HeaderMap::new(), &HeaderMap::new(), "grpc-status"),
            None
        );
    }

    #[test]
    fn status_messages_are_percent_decoded() {
        let decode = |s: &str| status_message(Some(&HeaderValue::from_str(s).unwrap()));
        assert_eq!(decode("not found"), b"not found");
        assert_eq!(decode("caf%C3%A9%20ok"), "café ok".as_bytes());
        assert_eq!(decode("100%"), b"100%");
        assert_eq!(decode("%zz%4"), b"%zz%4");
        assert_eq!(decode("%25%2a"), b"%*");
        assert_eq!(status_message(None), b"");
    }

    #[test]
    fn frames_split_a_body_into_messages() {
        let b = body(&[(false, b"ab"), (true, b""), (false, b"xyz")]);
        assert_eq!(
            frames(&b).unwrap(),
            vec![
                Frame {
                    compressed: false,
                    message: b"ab"
                },
                Frame {
                    compressed: true,
                    message: b""
                },
                Frame {
                    compressed: false,
                    message: b"xyz"
                },
            ]
        );
        assert_eq!(frames(b"").unwrap(), vec![]);
        // Cut short, in the prefix or in the message; an unknown flag.
        assert_eq!(frames(&b[..3]), None);
        assert_eq!(frames(&b[..b.len() - 1]), None);
        assert_eq!(frames(&[2, 0, 0, 0, 0]), None);
        assert_eq!(frames(&[0, 255, 255, 255, 255, 1]), None);
    }

    #[test]
    fn compressed_messages_are_made_plain_within_the_limit() {
        let packed = gzip(b"hello hello hello");
        let b = body(&[(true, &packed), (false, b"plain"), (true, b"not gzip")]);
        let mut reserved = 0;
        let result = decompress(&b, Coding::Gzip, 1000, &mut |n| {
            reserved += n;
            true
        });
        let expected = body(&[
            (false, b"hello hello hello"),
            (false, b"plain"),
            (true, b"not gzip"),
        ]);
        assert_eq!(result, Decompressed::Plain(expected.clone()));
        assert!(reserved >= expected.len(), "{reserved}");
        assert_eq!(
            decompress(&b, Coding::Gzip, expected.len() - 1, &mut |_| true),
            Decompressed::TooLarge
        );
        assert_eq!(
            decompress(&b, Coding::Gzip, 1000, &mut |_| false),
            Decompressed::OverBudget
        );
        // Nothing compressed, or no framing: nothing to do.
        let plain = body(&[(false, b"x")]);
        assert_eq!(
            decompress(&plain, Coding::Gzip, 1000, &mut |_| true),
            Decompressed::AsIs
        );
        assert_eq!(
            decompress(b"\x01\x00", Coding::Gzip, 1000, &mut |_| true),
            Decompressed::AsIs
        );
        // A bomb costs no more than the limit.
        let bomb = gzip(&vec![0; 50 << 20]);
        let b = body(&[(true, &bomb)]);
        assert_eq!(
            decompress(&b, Coding::Gzip, 1 << 20, &mut |_| true),
            Decompressed::TooLarge
        );
    }

    #[test]
    fn message_coding_is_grpc_encoding() {
        assert_eq!(
            coding(&headers(&[("grpc-encoding", "gzip")])),
            Some(Coding::Gzip)
        );
        assert_eq!(
            coding(&headers(&[("grpc-encoding", "deflate")])),
            Some(Coding::Deflate)
        );
        assert_eq!(coding(&headers(&[("grpc-encoding", "identity")])), None);
        assert_eq!(coding(&headers(&[("grpc-encoding", "snappy")])), None);
        assert_eq!(coding(&headers(&[("content-encoding", "gzip")])), None);
    }

    #[test]
    fn descriptors_find_a_methods_output_and_decode_it_to_json() {
        let d = Descriptors::decode(&echo_set()).unwrap();
        let output = d.output("/echo.Echo/Say").unwrap();
        assert_eq!(output.full_name(), "echo.Reply");
        for unknown in [
            "/echo.Echo/Other",
            "/echo.Other/Say",
            "/Say",
            "",
            "echo.Echo/Say",
        ] {
            assert!(d.output(unknown).is_none(), "{unknown}");
        }
        let json = to_json(&output, &reply("hi", 1 << 60, &[("a", 7)])).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"message": "hi", "id": 1u64 << 60, "items": [{"name": "a", "at": 7}]})
        );
        // Defaults are left out; bytes that are no Reply are not decoded.
        assert_eq!(to_json(&output, &[]).unwrap(), serde_json::json!({}));
        assert_eq!(to_json(&output, b"\xff\xff\xff"), None);
    }

    #[test]
    fn bad_descriptor_sets_are_refused() {
        assert!(matches!(Descriptors::decode(b"\xff\xff"), Err(Some(_))));
        // Valid, but no service: the empty set.
        assert!(matches!(Descriptors::decode(b""), Err(None)));
        // A file that imports one the set does not hold.
        let set = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some("a.proto".into()),
                dependency: vec!["missing.proto".into()],
                ..Default::default()
            }],
        };
        let Err(Some(message)) = Descriptors::decode(&set.encode_to_vec()) else {
            panic!("a missing import is an error");
        };
        assert!(message.contains("missing.proto"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
}
