//! AWS Signature Version 4 verification of the operator API's requests.
//!
//! apid speaks the ECS API so that the real `aws` CLI, boto3 and the SDKs drive it with nothing
//! but `--endpoint-url` and an access key apid issued. Those clients sign every request with SigV4
//! in the `Authorization` header; this module checks that signature as AWS does, so a request AWS
//! would accept is accepted and one it would refuse is refused:
//!
//! - the canonical request is rebuilt from the request itself and the header's own
//!   `SignedHeaders`: header values trimmed with inner runs of whitespace folded, repeated headers
//!   joined with `,`; the path normalised (`.`, `..` and empty segments) and URI-encoded as for
//!   every service but S3; the query string decoded, re-encoded and sorted;
//! - `host` must be signed, and so must the header that dates the request and, when present,
//!   `X-Amz-Target` (it chooses the action) and `X-Amz-Content-SHA256`;
//! - the payload is covered by the body's SHA-256; an `X-Amz-Content-SHA256` header must agree with
//!   it (so `UNSIGNED-PAYLOAD` and streaming payloads are refused);
//! - the request time (`X-Amz-Date`, or an RFC 1123 `Date` header when that is absent) must be
//!   within 15 minutes of `now` either way, and the credential scope must name that day, the
//!   region and service apid serves, and `aws4_request`;
//! - the signature is compared in constant time, so response timing tells nothing about it.
//!
//! Every refusal is a [`SigV4Error`], one of the four exception names AWS uses, with AWS's wording
//! where it has one; all are client errors and no input makes this module panic.
//!
//! Out of scope: query-string (presigned URL) authentication, since the CLI and SDKs sign ECS
//! calls in the header (a request without an `Authorization` header is
//! MissingAuthenticationToken whatever its query holds); temporary credentials, since apid issues
//! long-term access keys only (a request carrying `X-Amz-Security-Token` is UnrecognizedClient);
//! SigV4a; S3's path and chunked-payload rules. As with AWS, a captured request can be replayed
//! within the skew window: TLS is what keeps it from being captured.
//!
//! The canonical request, the string to sign and the signing key are `skiff_runtime::sigv4`'s,
//! the same code that signs `skiff control`'s requests; this module adds what only a verifier
//! needs: parsing, the rules above, and the comparison.
//!
//! Finding the secret is the caller's job: [`parse_authorization`] yields the access key id, the
//! caller looks its secret up (answering UnrecognizedClient for an unknown or revoked key) and
//! calls [`verify`].

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::header::{AUTHORIZATION, DATE, HOST};
use axum::http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use skiff_runtime::sigv4::{
    ALGORITHM, Scope, TERMINATOR, X_AMZ_CONTENT_SHA256, X_AMZ_DATE, civil_from_days, format_basic,
    signature,
};
use subtle::ConstantTimeEq;

/// The parts of a request that SigV4 covers.
#[derive(Debug)]
pub struct Request<'a> {
    /// `POST`.
    pub method: &'a str,
    /// The URI path, as received (`/`).
    pub path: &'a str,
    /// The raw query string (empty for AWS JSON).
    pub query: &'a str,
    /// All headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

/// A parsed `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id.
    pub access_key_id: String,
    /// The scope's date (`YYYYMMDD`).
    pub date: String,
    /// The scope's region.
    pub region: String,
    /// The scope's service.
    pub service: String,
    /// SignedHeaders, lowercase, in order.
    pub signed_headers: Vec<String>,
    /// The hex signature.
    pub signature: String,
}

/// Why a request's signature was refused; each is one of the exception names AWS uses.
#[derive(Debug, thiserror::Error)]
pub enum SigV4Error {
    /// No Authorization header.
    #[error("Missing Authentication Token")]
    MissingAuthenticationToken,
    /// The header or a required part is malformed.
    #[error("{0}")]
    IncompleteSignature(String),
    /// The access key is unknown or revoked, or the request carries a session token (apid issues
    /// no temporary credentials, so every token is invalid).
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    /// Scope, time or signature wrong.
    #[error("{0}")]
    InvalidSignature(String),
}

impl SigV4Error {
    /// The `__type` AWS returns for it.
    pub fn aws_type(&self) -> &'static str {
        match self {
            Self::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            Self::IncompleteSignature(_) => "IncompleteSignatureException",
            Self::UnrecognizedClient => "UnrecognizedClientException",
            Self::InvalidSignature(_) => "InvalidSignatureException",
        }
    }
}

/// The clock skew AWS tolerates either way.
const MAX_SKEW_SECS: i64 = 15 * 60;
const X_AMZ_TARGET: &str = "x-amz-target";
const X_AMZ_SECURITY_TOKEN: &str = "x-amz-security-token";
const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature \
                                  you provided. Check your AWS Secret Access Key and signing method.";
/// 9999-12-31T23:59:59Z: `now` is clamped to four-digit years, the only ones a request can name.
const MAX_UNIX: i64 = 253_402_300_799;

/// Parses the Authorization header.
///
/// Refuses a request with several Authorization headers or an `X-Amz-Security-Token`, a scheme
/// other than `AWS4-HMAC-SHA256`, and a header lacking `Credential`, `SignedHeaders` or
/// `Signature` or holding anything else. Only the header's shape is checked: [`verify`] checks
/// what it says.
pub fn parse_authorization(headers: &HeaderMap) -> Result<Authorization, SigV4Error> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(SigV4Error::MissingAuthenticationToken);
    };
    if values.next().is_some() {
        return Err(incomplete("Only one Authorization header may be sent."));
    }
    refuse_session_token(headers)?;
    let header = value
        .to_str()
        .map_err(|_| incomplete("The Authorization header must be printable ASCII."))?
        .trim();
    let (algorithm, components) = header.split_once([' ', '\t']).unwrap_or((header, ""));
    if algorithm != ALGORITHM {
        return Err(incomplete(format!(
            "Unsupported AWS 'algorithm': '{algorithm}'; only {ALGORITHM} is accepted."
        )));
    }

    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for component in components
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        let Some((key, value)) = component.split_once('=') else {
            return Err(incomplete(format!(
                "'{component}' not a valid key=value pair (missing equal-sign) in Authorization \
                 header: '{header}'."
            )));
        };
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => {
                return Err(incomplete(format!(
                    "Unknown parameter '{key}' in Authorization header: '{header}'."
                )));
            }
        };
        if slot.replace(value).is_some() {
            return Err(incomplete(format!(
                "Authorization header has more than one '{key}' parameter: '{header}'."
            )));
        }
    }
    let required = [
        ("Credential", credential),
        ("SignedHeaders", signed_headers),
        ("Signature", signature),
    ]
    .map(|(name, value)| (name, value.filter(|v| !v.is_empty())));
    let [
        (_, Some(credential)),
        (_, Some(signed_headers)),
        (_, Some(signature)),
    ] = required
    else {
        let missing: String = required
            .iter()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| format!("Authorization header requires '{name}' parameter. "))
            .collect();
        return Err(incomplete(format!("{missing}Authorization={header}")));
    };

    let [access_key_id, date, region, service, terminator] =
        credential.split('/').collect::<Vec<_>>()[..]
    else {
        return Err(incomplete(format!(
            "Credential must have exactly 5 slash-delimited elements, e.g. \
             keyid/date/region/service/term, got '{credential}'"
        )));
    };
    if terminator != TERMINATOR {
        return Err(incomplete(format!(
            "Credential should be scoped with a valid terminator: '{TERMINATOR}', not \
             '{terminator}'."
        )));
    }
    let signed_headers = signed_headers
        .split(';')
        .map(|name| {
            HeaderName::from_bytes(name.as_bytes())
                .map(|name| name.as_str().to_owned())
                .map_err(|_| {
                    incomplete(format!(
                        "SignedHeaders holds an invalid header name '{name}': '{header}'."
                    ))
                })
        })
        .collect::<Result<_, _>>()?;

    Ok(Authorization {
        access_key_id: access_key_id.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers,
        signature: signature.to_owned(),
    })
}

/// Verifies `req` signed as `auth` says with `secret`, at `now`, for `region` and `service`.
///
/// The checks run from the cheapest to the signature itself: session token, scope, required
/// signed headers, request time against the scope and `now`, payload hash, signature.
pub fn verify(
    req: &Request<'_>,
    auth: &Authorization,
    secret: &str,
    now: SystemTime,
    region: &str,
    service: &str,
) -> Result<(), SigV4Error> {
    refuse_session_token(req.headers)?;
    if auth.region != region {
        return Err(invalid(format!(
            "Credential should be scoped to a valid region, not '{}'.",
            auth.region
        )));
    }
    if auth.service != service {
        return Err(invalid(format!(
            "Credential should be scoped to correct service: '{service}'."
        )));
    }
    let (date_header, signed_at) = request_time(req.headers)?;
    for name in [
        HOST.as_str(),
        date_header,
        X_AMZ_TARGET,
        X_AMZ_CONTENT_SHA256,
    ] {
        let required = name == HOST || req.headers.contains_key(name);
        if required && !auth.signed_headers.iter().any(|signed| signed == name) {
            return Err(invalid(format!(
                "'{name}' must be a 'SignedHeader' in the AWS Authorization."
            )));
        }
    }
    let amz_date = format_basic(signed_at);
    let day = amz_date.get(..8).unwrap_or_default();
    if auth.date != day {
        return Err(invalid(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from \
             HTTP: '{}' != '{day}', from '{amz_date}'.",
            auth.date
        )));
    }
    check_skew(signed_at, &amz_date, now)?;

    let canonical = canonical_request(req, &auth.signed_headers, &payload_hash(req)?);
    let expected = sign(&canonical, auth, secret, &amz_date);
    if bool::from(expected.as_bytes().ct_eq(auth.signature.as_bytes())) {
        Ok(())
    } else {
        tracing::debug!(
            access_key_id = %auth.access_key_id,
            canonical_request = %String::from_utf8_lossy(&canonical),
            "SigV4 signature mismatch"
        );
        Err(invalid(SIGNATURE_MISMATCH))
    }
}

fn incomplete(message: impl Into<String>) -> SigV4Error {
    SigV4Error::IncompleteSignature(message.into())
}

fn invalid(message: impl Into<String>) -> SigV4Error {
    SigV4Error::InvalidSignature(message.into())
}

/// Temporary credentials are not issued by apid, so a session token can never be valid.
fn refuse_session_token(headers: &HeaderMap) -> Result<(), SigV4Error> {
    if headers.contains_key(X_AMZ_SECURITY_TOKEN) {
        Err(SigV4Error::UnrecognizedClient)
    } else {
        Ok(())
    }
}

/// The header that dates the request (`X-Amz-Date`, else `Date`) and its time in Unix seconds.
fn request_time(headers: &HeaderMap) -> Result<(&'static str, i64), SigV4Error> {
    if let Some(value) = headers.get(X_AMZ_DATE) {
        return value
            .to_str()
            .ok()
            .and_then(parse_basic)
            .map(|time| (X_AMZ_DATE, time))
            .ok_or_else(|| {
                incomplete(format!(
                    "Date must be in ISO-8601 'basic format'. Got '{}'. See \
                     http://en.wikipedia.org/wiki/ISO_8601",
                    String::from_utf8_lossy(value.as_bytes())
                ))
            });
    }
    if let Some(value) = headers.get(DATE) {
        return value
            .to_str()
            .ok()
            .and_then(parse_http_date)
            .map(|time| (DATE.as_str(), time))
            .ok_or_else(|| {
                incomplete(format!(
                    "Date header must be in RFC 1123 format, e.g. 'Sun, 30 Aug 2015 12:36:00 \
                     GMT'. Got '{}'.",
                    String::from_utf8_lossy(value.as_bytes())
                ))
            });
    }
    Err(incomplete(
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
    ))
}

fn check_skew(signed_at: i64, amz_date: &str, now: SystemTime) -> Result<(), SigV4Error> {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_secs()).map_or(MAX_UNIX, |secs| secs.min(MAX_UNIX))
    });
    if signed_at < now - MAX_SKEW_SECS {
        Err(invalid(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 15 min.)",
            format_basic(now - MAX_SKEW_SECS),
            format_basic(now)
        )))
    } else if signed_at > now + MAX_SKEW_SECS {
        Err(invalid(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + 15 min.)",
            format_basic(now + MAX_SKEW_SECS),
            format_basic(now)
        )))
    } else {
        Ok(())
    }
}

/// The hex SHA-256 of the body, or the `X-Amz-Content-SHA256` header's value if it agrees.
fn payload_hash(req: &Request<'_>) -> Result<String, SigV4Error> {
    let computed = hex::encode(Sha256::digest(req.body));
    let Some(claimed) = req.headers.get(X_AMZ_CONTENT_SHA256) else {
        return Ok(computed);
    };
    match claimed.to_str().map(str::trim) {
        Ok(claimed) if claimed.eq_ignore_ascii_case(&computed) => Ok(claimed.to_owned()),
        _ => Err(invalid(
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )),
    }
}

/// The canonical request of `req` (see [`skiff_runtime::sigv4::canonical_request`]).
fn canonical_request(req: &Request<'_>, signed_headers: &[String], payload_hash: &str) -> Vec<u8> {
    skiff_runtime::sigv4::canonical_request(
        req.method,
        req.path,
        req.query,
        req.headers,
        signed_headers,
        payload_hash,
    )
}

/// The hex signature of `canonical` under `secret` for `auth`'s scope at `amz_date`.
fn sign(canonical: &[u8], auth: &Authorization, secret: &str, amz_date: &str) -> String {
    let scope = Scope {
        date: &auth.date,
        region: &auth.region,
        service: &auth.service,
    };
    signature(canonical, scope, secret, amz_date)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Unix seconds of a UTC date and time, or `None` if it does not exist (31 April, 61 seconds).
fn unix_from_civil(date: (i64, i64, i64), hour: i64, minute: i64, second: i64) -> Option<i64> {
    let (year, month, day) = date;
    let in_range = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0..60).contains(&second);
    let days = days_from_civil(year, month, day);
    (in_range && civil_from_days(days) == date)
        .then_some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// A run of exactly `len` ASCII digits.
fn digits(text: &str, len: usize) -> Option<i64> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// ISO 8601 basic format, `YYYYMMDDTHHMMSSZ`, as `X-Amz-Date` carries it.
fn parse_basic(text: &str) -> Option<i64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    if date.len() != 8 || time.len() != 6 {
        return None;
    }
    let two = |text: &str, at: usize| digits(text.get(at..at + 2)?, 2);
    unix_from_civil(
        (digits(date.get(..4)?, 4)?, two(date, 4)?, two(date, 6)?),
        two(time, 0)?,
        two(time, 2)?,
        two(time, 4)?,
    )
}

/// RFC 1123 (`Sun, 30 Aug 2015 12:36:00 GMT`), also with the numeric zone `-0000` or `+0000`
/// that botocore's `formatdate` writes. The weekday is optional and not checked.
fn parse_http_date(text: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let words: Vec<_> = text.split_ascii_whitespace().collect();
    let rest = match &words[..] {
        [weekday, rest @ ..] if weekday.ends_with(',') => rest,
        all => all,
    };
    let [day, month, year, time, "GMT" | "UTC" | "+0000" | "-0000"] = rest else {
        return None;
    };
    let day = digits(day, 2).or_else(|| digits(day, 1))?;
    let (month, _) = (1..).zip(MONTHS).find(|(_, name)| name == month)?;
    let [hour, minute, second] = time.split(':').collect::<Vec<_>>()[..] else {
        return None;
    };
    unix_from_civil(
        (digits(year, 4)?, month, day),
        digits(hour, 2)?,
        digits(minute, 2)?,
        digits(second, 2)?,
    )
}

#[cfg(test)]
#[path = "sigv4_tests.rs"]
mod tests;
