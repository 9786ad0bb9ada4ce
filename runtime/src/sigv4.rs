//! AWS Signature Version 4, the signing side: the canonical request, the string to sign and the
//! signing key, and a [`Signer`] that adds `X-Amz-Date` and `Authorization` to a request as
//! botocore's `SigV4Auth` does.
//!
//! `skiff control` signs its calls to apid's operator API with it, and apid's verifier
//! (`skiff_apid::sigv4`) rebuilds the canonical request and the signature with the same functions,
//! so the two cannot drift apart. The rules are SigV4's for every service but S3: header values
//! trimmed with inner runs of whitespace folded and repeated headers joined with `,`; the path
//! normalised (`.`, `..` and empty segments) and URI-encoded as received (so an encoded path is
//! encoded twice); the query decoded, re-encoded and sorted.
//!
//! The signer signs every header the request carries except those botocore leaves out
//! (`user-agent`, `expect`, `x-amzn-trace-id`), so a proxy that rewrites those does not break the
//! signature. It covers the body's SHA-256, or the `X-Amz-Content-SHA256` header's value when the
//! request has one. Limitations: header authentication only (no presigned URLs), long-term keys
//! only (no session token), no SigV4a, no S3 rules.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use hyper::http::header::AUTHORIZATION;
use hyper::http::request::Parts;
use hyper::http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

/// The signing algorithm named in `Authorization` and in the string to sign.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The last element of a credential scope.
pub const TERMINATOR: &str = "aws4_request";
/// The header that dates a signed request.
pub const X_AMZ_DATE: &str = "x-amz-date";
/// The header that may carry the payload's hash.
pub const X_AMZ_CONTENT_SHA256: &str = "x-amz-content-sha256";
/// Headers botocore does not sign: proxies and clients may add or change them.
const UNSIGNED_HEADERS: [&str; 4] = ["authorization", "expect", "user-agent", "x-amzn-trace-id"];

/// Errors of signing a request.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The access key id cannot go into an HTTP header.
    #[error("access key id {access_key_id:?} is not printable ASCII")]
    AccessKeyId {
        /// The key id.
        access_key_id: String,
    },
}

/// A credential scope: the day, region and service a signature is valid for.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// `YYYYMMDD`.
    pub date: &'a str,
    /// The region (`us-east-1`).
    pub region: &'a str,
    /// The service (`ecs`).
    pub service: &'a str,
}

/// A long-term access key pair, as apid issues them.
#[derive(Clone)]
pub struct Credentials {
    /// `AKIA...`.
    pub access_key_id: String,
    /// The secret.
    pub secret_access_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Signs requests with one key for one region and service.
///
/// ```no_run
/// use std::time::SystemTime;
/// use skiff_runtime::sigv4::{Credentials, Signer};
///
/// let signer = Signer {
///     credentials: Credentials {
///         access_key_id: "AKIAEXAMPLE".into(),
///         secret_access_key: "secret".into(),
///     },
///     region: "us-east-1".into(),
///     service: "ecs".into(),
/// };
/// let (mut parts, body) = hyper::Request::post("/")
///     .header("host", "127.0.0.1:8460")
///     .body(b"{}".to_vec())
///     .unwrap()
///     .into_parts();
/// signer.sign(&mut parts, &body, SystemTime::now()).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct Signer {
    /// The key.
    pub credentials: Credentials,
    /// The region of the scope.
    pub region: String,
    /// The service of the scope.
    pub service: String,
}

impl Signer {
    /// Sets `X-Amz-Date` to `now` and adds the `Authorization` header that signs `parts` (method,
    /// URI, headers: `Host` must already be there) and `body`.
    pub fn sign(&self, parts: &mut Parts, body: &[u8], now: SystemTime) -> Result<(), SignError> {
        let unix = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let amz_date = format_basic(unix);
        parts.headers.insert(
            X_AMZ_DATE,
            HeaderValue::from_str(&amz_date).expect("a basic-format date is ASCII"),
        );
        parts.headers.remove(AUTHORIZATION);
        let mut signed_headers: Vec<String> = parts
            .headers
            .keys()
            .map(|name| name.as_str().to_owned())
            .filter(|name| !UNSIGNED_HEADERS.contains(&name.as_str()))
            .collect();
        signed_headers.sort_unstable();
        let payload_hash = match parts.headers.get(X_AMZ_CONTENT_SHA256) {
            Some(claimed) => String::from_utf8_lossy(claimed.as_bytes())
                .trim()
                .to_owned(),
            None => hex::encode(Sha256::digest(body)),
        };
        let canonical = canonical_request(
            parts.method.as_str(),
            parts.uri.path(),
            parts.uri.query().unwrap_or(""),
            &parts.headers,
            &signed_headers,
            &payload_hash,
        );
        let scope = Scope {
            date: &amz_date[..8],
            region: &self.region,
            service: &self.service,
        };
        let signature = signature(
            &canonical,
            scope,
            &self.credentials.secret_access_key,
            &amz_date,
        );
        let value = format!(
            "{ALGORITHM} Credential={}/{}/{}/{}/{TERMINATOR}, SignedHeaders={}, Signature={signature}",
            self.credentials.access_key_id,
            scope.date,
            scope.region,
            scope.service,
            signed_headers.join(";"),
        );
        let value = HeaderValue::from_str(&value).map_err(|_| SignError::AccessKeyId {
            access_key_id: self.credentials.access_key_id.clone(),
        })?;
        parts.headers.insert(AUTHORIZATION, value);
        Ok(())
    }
}

/// The canonical request of `method path?query` with `headers`, covering `signed_headers`
/// (lowercase, sorted) and a payload of hash `payload_hash`; in bytes, since header values need
/// not be UTF-8.
pub fn canonical_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    signed_headers: &[String],
    payload_hash: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    for line in [method, &canonical_uri(path), &canonical_query(query)] {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    for name in signed_headers {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        for (i, value) in headers.get_all(name.as_str()).iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let words = value.as_bytes().split(u8::is_ascii_whitespace);
            for (j, word) in words.filter(|word| !word.is_empty()).enumerate() {
                if j > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(word);
            }
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(signed_headers.join(";").as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload_hash.as_bytes());
    out
}

/// The path with `.`, `..` and empty segments resolved (as botocore and the SDKs do), each
/// segment URI-encoded as received: for services other than S3 an already-encoded path is thus
/// encoded twice, as SigV4 specifies.
pub fn canonical_uri(path: &str) -> String {
    let mut segments = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for segment in &segments {
        out.push('/');
        uri_encode(segment.as_bytes(), &mut out);
    }
    if out.is_empty() || path.ends_with('/') {
        out.push('/');
    }
    out
}

/// The query's `name=value` pairs decoded, re-encoded and sorted by name, then value.
pub fn canonical_query(query: &str) -> String {
    let reencode = |component: &str| {
        let mut out = String::with_capacity(component.len());
        uri_encode(&percent_decode(component.as_bytes()), &mut out);
        out
    };
    let mut pairs: Vec<_> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (reencode(name), reencode(value))
        })
        .collect();
    pairs.sort_unstable();
    let pairs: Vec<_> = pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    pairs.join("&")
}

/// SigV4's URI encoding: everything but `A-Za-z0-9-_.~` as `%XX`, upper-case.
fn uri_encode(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
}

/// `%XX` decoded; a `%` not followed by two hex digits is kept as it is.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |byte: u8| {
        char::from(byte)
            .to_digit(16)
            .and_then(|digit| u8::try_from(digit).ok())
    };
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&byte, tail)) = rest.split_first() {
        match tail {
            [high, low, after @ ..] if byte == b'%' => match (hex(*high), hex(*low)) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    rest = after;
                    continue;
                }
                _ => out.push(byte),
            },
            _ => out.push(byte),
        }
        rest = tail;
    }
    out
}

/// The hex signature of `canonical` under `secret` for `scope` at `amz_date` (the string to sign
/// over the canonical request's hash, with the key derived from the secret through the scope).
pub fn signature(canonical: &[u8], scope: Scope<'_>, secret: &str, amz_date: &str) -> String {
    let Scope {
        date,
        region,
        service,
    } = scope;
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{date}/{region}/{service}/{TERMINATOR}\n{}",
        hex::encode(Sha256::digest(canonical))
    );
    let signing_key = [date, region, service, TERMINATOR]
        .into_iter()
        .fold(format!("AWS4{secret}").into_bytes(), |key, part| {
            hmac_sha256(&key, part.as_bytes())
        });
    hex::encode(hmac_sha256(&signing_key, string_to_sign.as_bytes()))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The proleptic Gregorian (year, month, day) of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

/// Unix seconds as ISO 8601 basic format, `YYYYMMDDTHHMMSSZ` (what `X-Amz-Date` carries).
pub fn format_basic(unix: i64) -> String {
    let (year, month, day) = civil_from_days(unix.div_euclid(86_400));
    let second = unix.rem_euclid(86_400);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        second / 3600,
        second / 60 % 60,
        second % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hyper::http::{HeaderName, Request};
    use serde_json::Value;

    use super::*;

    /// Requests botocore signed: the signer must produce botocore's `Authorization` for each.
    /// The one dated by `Date` instead of `X-Amz-Date` is left out, since the signer always
    /// dates with `X-Amz-Date` as botocore does by default.
    #[test]
    fn signs_as_botocore_does() {
        let fixture: Value =
            serde_json::from_str(include_str!("../../apid/tests/sigv4/botocore.json"))
                .expect("botocore.json");
        let text = |v: &Value| v.as_str().expect("a string in botocore.json").to_owned();
        let signer = Signer {
            credentials: Credentials {
                access_key_id: text(&fixture["access_key_id"]),
                secret_access_key: text(&fixture["secret"]),
            },
            region: text(&fixture["region"]),
            service: text(&fixture["service"]),
        };
        let now = UNIX_EPOCH + Duration::from_secs(fixture["now_unix"].as_u64().expect("now_unix"));
        let mut signed = 0;
        for request in fixture["requests"].as_array().expect("requests") {
            let name = text(&request["name"]);
            let headers: Vec<(String, String)> = request["headers"]
                .as_array()
                .expect("headers")
                .iter()
                .map(|pair| (text(&pair[0]), text(&pair[1])))
                .collect();
            let header = |wanted: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(wanted))
                    .map(|(_, v)| v.clone())
            };
            if header(X_AMZ_DATE).is_none() {
                continue;
            }
            let uri = match text(&request["query"]).as_str() {
                "" => text(&request["path"]),
                query => format!("{}?{query}", text(&request["path"])),
            };
            let mut builder = Request::builder()
                .method(text(&request["method"]).as_str())
                .uri(uri);
            for (header_name, value) in &headers {
                if !header_name.eq_ignore_ascii_case("authorization") {
                    builder = builder.header(
                        HeaderName::from_bytes(header_name.as_bytes()).expect("name"),
                        value.as_str(),
                    );
                }
            }
            let (mut parts, ()) = builder.body(()).expect(&name).into_parts();
            signer
                .sign(&mut parts, text(&request["body"]).as_bytes(), now)
                .expect(&name);
            assert_eq!(
                parts.headers[AUTHORIZATION].to_str().unwrap(),
                header("authorization").unwrap(),
                "{name}"
            );
            signed += 1;
        }
        assert!(signed >= 7, "only {signed} fixture requests signed");
    }

    #[test]
    fn unsigned_headers_are_left_out_and_x_amz_date_is_set() {
        let signer = Signer {
            credentials: Credentials {
                access_key_id: "AKIATEST".into(),
                secret_access_key: "s".into(),
            },
            region: "us-east-1".into(),
            service: "ecs".into(),
        };
        let (mut parts, ()) = Request::post("/")
            .header("host", "h")
            .header("user-agent", "skiff")
            .header("authorization", "stale")
            .body(())
            .unwrap()
            .into_parts();
        signer
            .sign(
                &mut parts,
                b"",
                UNIX_EPOCH + Duration::from_secs(1_440_938_160),
            )
            .unwrap();
        assert_eq!(parts.headers[X_AMZ_DATE], "20150830T123600Z");
        let auth = parts.headers[AUTHORIZATION].to_str().unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIATEST/20150830/us-east-1/ecs/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature="
            ),
            "{auth}"
        );
        // A key id that cannot be a header value is refused, not a panic.
        let mut bad = signer.clone();
        bad.credentials.access_key_id = "AKIA\n".into();
        let e = bad.sign(&mut parts, b"", SystemTime::now()).unwrap_err();
        assert!(e.to_string().contains("AKIA\\n"), "{e}");
        // The secret stays out of Debug.
        assert!(!format!("{signer:?}").contains("secret_access_key"));
    }

    #[test]
    fn formats_basic_dates() {
        assert_eq!(format_basic(0), "19700101T000000Z");
        assert_eq!(format_basic(1_440_938_160), "20150830T123600Z");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
