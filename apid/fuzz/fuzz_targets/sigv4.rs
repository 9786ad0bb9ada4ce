//! Arbitrary requests through apid's SigV4 verification, with the key set of the botocore
//! fixture (`apid/tests/sigv4/botocore.json`) at its time. The input is a request in an
//! HTTP/1-like text form, so that seeds are readable and mutations keep its shape:
//!
//! ```text
//! METHOD /path?query
//! Name: value
//! ...
//!
//! body
//! ```
//!
//! Header lines that are not a valid name and value are skipped. Properties:
//!
//! - parsing and verifying the request as given never panics;
//! - the same request (method, path, query, headers, body) signed by this target's own SigV4
//!   signer, written from the specification and not from apid's code, verifies;
//! - that signature with one character changed is refused as a signature mismatch.

#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use skiff_apid::sigv4::{self, Request, SigV4Error};

/// The botocore fixture's key, scope and time (20261122T091500Z).
const KEY_ID: &str = "AKIASKIFFEXAMPLE0001";
const SECRET: &str = "skiff/Secret+Key=EXAMPLE0123456789abcdefgh";
const REGION: &str = "eu-west-3";
const SERVICE: &str = "ecs";
const NOW_UNIX: u64 = 1_795_338_900;
const AMZ_DATE: &str = "20261122T091500Z";

fuzz_target!(|data: &[u8]| {
    let (method, path, query, mut headers, body) = parse(data);
    let now = UNIX_EPOCH + Duration::from_secs(NOW_UNIX);

    // As given: any outcome but a panic.
    let _ = check(&method, &path, &query, &headers, body, now);

    // Signed by our signer: accepted.
    let authorization = sign(&method, &path, &query, &mut headers, body);
    headers.insert("authorization", value(&authorization));
    if let Err(e) = check(&method, &path, &query, &headers, body, now) {
        panic!(
            "a correctly signed request is refused: {e:?} ({e})\nauthorization: {authorization}"
        );
    }

    // One character of the signature changed: refused as a mismatch.
    let mut tampered = authorization.into_bytes();
    let last = tampered.len() - 1;
    let at = last - body.len() % 64;
    tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).expect("ASCII");
    headers.insert("authorization", value(&tampered));
    match check(&method, &path, &query, &headers, body, now) {
        Err(SigV4Error::InvalidSignature(m)) if m.contains("does not match") => {}
        other => panic!("a tampered signature is not a mismatch: {other:?}\n{tampered}"),
    }
});

/// What apid's HTTP layer does: parse, look the key up, verify.
fn check(
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<(), SigV4Error> {
    let auth = sigv4::parse_authorization(headers)?;
    if auth.access_key_id != KEY_ID {
        return Err(SigV4Error::UnrecognizedClient);
    }
    let req = Request {
        method,
        path,
        query,
        headers,
        body,
    };
    sigv4::verify(&req, &auth, SECRET, now, REGION, SERVICE)
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("a valid header value")
}

/// Method, path, query, headers and body of the text form.
fn parse(data: &[u8]) -> (String, String, String, HeaderMap, &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let first = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let (method, target) = first.split_once(' ').unwrap_or((&first, "/"));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) {
            headers.append(name, value);
        }
    }
    (
        method.to_owned(),
        path.to_owned(),
        query.to_owned(),
        headers,
        body,
    )
}

/// Makes the request signable (a Host, our date, the body's hash if one is claimed, no session
/// token), signs every header it has, and returns the Authorization header's value.
fn sign(method: &str, path: &str, query: &str, headers: &mut HeaderMap, body: &[u8]) -> String {
    headers.remove("authorization");
    headers.remove("x-amz-security-token");
    if !headers.contains_key("host") {
        headers.insert("host", value("127.0.0.1:8443"));
    }
    headers.insert("x-amz-date", value(AMZ_DATE));
    let body_hash = hex::encode(Sha256::digest(body));
    if headers.contains_key("x-amz-content-sha256") {
        headers.insert("x-amz-content-sha256", value(&body_hash));
    }

    let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    let signed_headers = names.join(";");

    let mut canonical = Vec::new();
    canonical.extend_from_slice(method.as_bytes());
    canonical.push(b'\n');
    canonical.extend_from_slice(canonical_path(path).as_bytes());
    canonical.push(b'\n');
    canonical.extend_from_slice(canonical_query(query).as_bytes());
    canonical.push(b'\n');
    for name in &names {
        canonical.extend_from_slice(name.as_bytes());
        canonical.push(b':');
        let values: Vec<Vec<u8>> = headers
            .get_all(*name)
            .iter()
            .map(|v| fold_spaces(v.as_bytes()))
            .collect();
        canonical.extend_from_slice(&values.join(&b","[..]));
        canonical.push(b'\n');
    }
    canonical.push(b'\n');
    canonical.extend_from_slice(signed_headers.as_bytes());
    canonical.push(b'\n');
    canonical.extend_from_slice(body_hash.as_bytes());

    let day = &AMZ_DATE[..8];
    let scope = format!("{day}/{REGION}/{SERVICE}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{AMZ_DATE}\n{scope}\n{}",
        hex::encode(Sha256::digest(&canonical))
    );
    let mut key = hmac(format!("AWS4{SECRET}").as_bytes(), day.as_bytes());
    for part in [REGION, SERVICE, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={KEY_ID}/{scope}, SignedHeaders={signed_headers}, \
         Signature={signature}"
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// A header value trimmed, with each run of spaces and tabs made one space.
fn fold_spaces(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut space = false;
    for &b in value.trim_ascii() {
        if b == b' ' || b == b'\t' {
            space = true;
        } else {
            if space {
                out.push(b' ');
            }
            space = false;
            out.push(b);
        }
    }
    out
}

/// SigV4's encoding: unreserved characters as they are, every other byte `%XX`.
fn encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The path as botocore normalises it (`posixpath.normpath`, keeping a trailing slash), each
/// segment encoded.
fn canonical_path(path: &str) -> String {
    let mut stack: Vec<&str> = Vec::new();
    for segment in path.split('/').filter(|s| !s.is_empty() && *s != ".") {
        if segment == ".." {
            stack.pop();
        } else {
            stack.push(segment);
        }
    }
    let mut out: String = stack
        .iter()
        .map(|s| format!("/{}", encode(s.as_bytes())))
        .collect();
    if out.is_empty() || path.ends_with('/') {
        out.push('/');
    }
    out
}

/// Percent-decodes `%XX` (hex, either case); any other `%` is a literal.
fn decode(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| {
            std::str::from_utf8(h)
                .ok()
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        });
        match (b[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (other, _) => {
                out.push(other);
                i += 1;
            }
        }
    }
    out
}

/// The query's pairs, decoded and re-encoded, sorted by name and then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            (encode(&decode(name)), encode(&decode(value)))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}
