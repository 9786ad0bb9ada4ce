//! SigV4 verification against the AWS test suite, against requests signed by botocore
//! (`apid/tests/sigv4/botocore.json`, made by `gen_botocore.py` next to it) and against every
//! way a request should be refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use skiff_runtime::sigv4::{canonical_query, canonical_uri};

use super::*;

fn header_map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    map
}

fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

/// An owned request, so tests can tamper with it before borrowing it as a [`Request`].
#[derive(Clone)]
struct Owned {
    method: String,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Owned {
    fn request(&self) -> Request<'_> {
        Request {
            method: &self.method,
            path: &self.path,
            query: &self.query,
            headers: &self.headers,
            body: &self.body,
        }
    }

    /// What the HTTP layer does: parse, then verify with the key's secret.
    fn check(
        &self,
        secret: &str,
        now: SystemTime,
        region: &str,
        service: &str,
    ) -> Result<(), SigV4Error> {
        let auth = parse_authorization(&self.headers)?;
        verify(&self.request(), &auth, secret, now, region, service)
    }

    /// Signs the request with this module's own signer, as `signed_headers` name, at its
    /// `X-Amz-Date`: for refusals that must come from a rule, not from a wrong signature.
    fn sign(&mut self, secret: &str, signed_headers: &str) {
        let amz_date = self.headers[X_AMZ_DATE]
            .to_str()
            .expect("X-Amz-Date")
            .to_owned();
        let mut auth = Authorization {
            access_key_id: FIXTURE_KEY.to_owned(),
            date: amz_date[..8].to_owned(),
            region: "eu-west-3".to_owned(),
            service: "ecs".to_owned(),
            signed_headers: signed_headers.split(';').map(str::to_owned).collect(),
            signature: String::new(),
        };
        let hash = payload_hash(&self.request()).expect("payload hash");
        let canonical = canonical_request(&self.request(), &auth.signed_headers, &hash);
        auth.signature = sign(&canonical, &auth, secret, &amz_date);
        let value = format!(
            "{ALGORITHM} Credential={}/{}/{}/{}/{TERMINATOR}, SignedHeaders={signed_headers}, Signature={}",
            auth.access_key_id, auth.date, auth.region, auth.service, auth.signature
        );
        self.headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&value).expect("header"),
        );
    }
}

// ---- the AWS SigV4 test suite ------------------------------------------------------------------

const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
/// 20150830T123600Z.
const SUITE_NOW: u64 = 1_440_938_160;

/// Vectors of the AWS SigV4 test suite (AKIDEXAMPLE, us-east-1, service `service`,
/// 20150830T123600Z, empty bodies unless given): name, method, raw path and query, headers besides
/// `Host` and `X-Amz-Date`, body, SignedHeaders, signature. Each expected signature is the
/// suite's, and botocore's SigV4Auth computes the same.
#[allow(clippy::type_complexity)]
#[rustfmt::skip]
const SUITE: &[(&str, &str, &str, &str, &[(&str, &str)], &str, &str, &str)] = &[
    ("get-vanilla", "GET", "/", "", &[], "", "host;x-amz-date",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("post-vanilla", "POST", "/", "", &[], "", "host;x-amz-date",
     "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ("get-vanilla-query-order-key-case", "GET", "/", "Param2=value2&Param1=value1", &[], "",
     "host;x-amz-date", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    ("post-vanilla-empty-query-value", "POST", "/", "Param1=value1", &[], "", "host;x-amz-date",
     "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"),
    ("post-x-www-form-urlencoded", "POST", "/", "",
     &[("Content-Type", "application/x-www-form-urlencoded")], "Param1=value1",
     "content-type;host;x-amz-date",
     "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
    ("post-header-key-sort", "POST", "/", "", &[("My-Header1", "value1")], "",
     "host;my-header1;x-amz-date",
     "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"),
    ("get-header-value-trim", "GET", "/", "",
     &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")], "",
     "host;my-header1;my-header2;x-amz-date",
     "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"),
    ("get-header-value-order", "GET", "/", "",
     &[("My-Header1", "value4"), ("My-Header1", "value1"), ("My-Header1", "value3"),
       ("My-Header1", "value2")], "", "host;my-header1;x-amz-date",
     "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01"),
    ("get-header-key-duplicate", "GET", "/", "",
     &[("My-Header1", "value2"), ("My-Header1", "value2"), ("My-Header1", "value1")], "",
     "host;my-header1;x-amz-date",
     "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"),
    ("get-space", "GET", "/example space/", "", &[], "", "host;x-amz-date",
     "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"),
    ("get-utf8", "GET", "/\u{1234}", "", &[], "", "host;x-amz-date",
     "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
    ("get-slash-pointless-dot", "GET", "/./example", "", &[], "", "host;x-amz-date",
     "ef75d96142cf21edca26f06005da7988e4f8dc83a165a80865db7089db637ec5"),
    ("get-relative-relative", "GET", "/example1/example2/../..", "", &[], "", "host;x-amz-date",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("get-slash", "GET", "//", "", &[], "", "host;x-amz-date",
     "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("get-slashes", "GET", "//example//", "", &[], "", "host;x-amz-date",
     "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84"),
];

#[test]
fn aws_test_suite_vectors_verify() {
    for &(name, method, path, query, extra, body, signed, signature) in SUITE {
        let authorization = format!(
            "{ALGORITHM} Credential=AKIDEXAMPLE/20150830/us-east-1/service/{TERMINATOR}, \
             SignedHeaders={signed}, Signature={signature}"
        );
        let headers = header_map(
            [
                ("Host", "example.amazonaws.com"),
                ("X-Amz-Date", "20150830T123600Z"),
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .chain([("Authorization", authorization.as_str())]),
        );
        let request = Owned {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers,
            body: body.as_bytes().to_vec(),
        };
        let result = request.check(SUITE_SECRET, at(SUITE_NOW), "us-east-1", "service");
        assert!(result.is_ok(), "{name}: {result:?}");
    }
}

// ---- requests signed by botocore ---------------------------------------------------------------

const FIXTURE_KEY: &str = "AKIASKIFFEXAMPLE0001";

#[derive(Deserialize)]
struct Fixture {
    access_key_id: String,
    secret: String,
    region: String,
    service: String,
    now_unix: u64,
    requests: Vec<FixtureRequest>,
}

#[derive(Deserialize)]
struct FixtureRequest {
    name: String,
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: String,
}

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("../tests/sigv4/botocore.json")).expect("botocore.json")
}

impl FixtureRequest {
    fn owned(&self) -> Owned {
        Owned {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            headers: header_map(self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
            body: self.body.as_bytes().to_vec(),
        }
    }
}

/// A botocore-signed request by name, with the fixture's secret and time.
fn botocore(name: &str) -> (Owned, String, SystemTime) {
    let fixture = fixture();
    let request = fixture
        .requests
        .iter()
        .find(|r| r.name == name)
        .expect(name);
    (request.owned(), fixture.secret, at(fixture.now_unix))
}

/// Verifies for the fixture's scope, eu-west-3 and ecs.
fn check(request: &Owned, secret: &str, now: SystemTime) -> Result<(), SigV4Error> {
    request.check(secret, now, "eu-west-3", "ecs")
}

#[test]
fn botocore_signed_requests_verify() {
    let fixture = fixture();
    assert_eq!(fixture.access_key_id, FIXTURE_KEY);
    assert!(fixture.requests.len() >= 8);
    for request in &fixture.requests {
        let owned = request.owned();
        let auth = parse_authorization(&owned.headers).expect(&request.name);
        assert_eq!(
            auth.access_key_id, fixture.access_key_id,
            "{}",
            request.name
        );
        let result = verify(
            &owned.request(),
            &auth,
            &fixture.secret,
            at(fixture.now_unix),
            &fixture.region,
            &fixture.service,
        );
        assert!(result.is_ok(), "{}: {result:?}", request.name);
    }
}

#[test]
fn parse_reads_every_part() {
    let (request, ..) = botocore("folded-header-spaces");
    let auth = parse_authorization(&request.headers).expect("parse");
    assert_eq!(
        auth,
        Authorization {
            access_key_id: FIXTURE_KEY.to_owned(),
            date: "20261122".to_owned(),
            region: "eu-west-3".to_owned(),
            service: "ecs".to_owned(),
            signed_headers: [
                "content-type",
                "host",
                "x-amz-date",
                "x-amz-target",
                "x-skiff-note"
            ]
            .map(str::to_owned)
            .to_vec(),
            signature: "1a733453de79ddb029e81425253bba87838abf69c629f94bbcf546d8d246a77b"
                .to_owned(),
        }
    );
}

#[test]
fn unsigned_headers_may_be_added() {
    let (mut request, secret, now) = botocore("list-clusters");
    request
        .headers
        .insert("user-agent", HeaderValue::from_static("aws-cli/2.0"));
    check(&request, &secret, now).expect("an unsigned User-Agent changes nothing");
}

// ---- refusals ----------------------------------------------------------------------------------

fn assert_invalid(result: Result<(), SigV4Error>, message: &str) {
    match result {
        Err(error @ SigV4Error::InvalidSignature(_)) => {
            assert_eq!(error.aws_type(), "InvalidSignatureException");
            assert_eq!(error.to_string(), message);
        }
        other => panic!("expected InvalidSignature({message:?}), got {other:?}"),
    }
}

fn assert_incomplete(result: Result<impl std::fmt::Debug, SigV4Error>, message: &str) {
    match result {
        Err(error @ SigV4Error::IncompleteSignature(_)) => {
            assert_eq!(error.aws_type(), "IncompleteSignatureException");
            assert_eq!(error.to_string(), message);
        }
        other => panic!("expected IncompleteSignature({message:?}), got {other:?}"),
    }
}

#[test]
fn wrong_secret_is_invalid_signature() {
    let (request, _, now) = botocore("list-clusters");
    assert_invalid(check(&request, "not-the-secret", now), SIGNATURE_MISMATCH);
}

#[test]
fn tampered_body_is_invalid_signature() {
    let (mut request, secret, now) = botocore("run-task-non-ascii-body");
    let body = String::from_utf8(request.body).expect("UTF-8 body");
    request.body = body.replace("web:3", "web:4").into_bytes();
    assert_invalid(check(&request, &secret, now), SIGNATURE_MISMATCH);
}

#[test]
fn tampered_signed_header_is_invalid_signature() {
    let (mut request, secret, now) = botocore("list-clusters");
    request.headers.insert(
        "x-amz-target",
        HeaderValue::from_static("AmazonEC2ContainerServiceV20141113.DeleteCluster"),
    );
    assert_invalid(check(&request, &secret, now), SIGNATURE_MISMATCH);

    let (mut request, secret, now) = botocore("folded-header-spaces");
    request.headers.insert(
        "x-skiff-note",
        HeaderValue::from_static("several spaces and a toad"),
    );
    assert_invalid(check(&request, &secret, now), SIGNATURE_MISMATCH);
}

#[test]
fn tampered_path_or_query_is_invalid_signature() {
    let (mut request, secret, now) = botocore("path-to-encode-and-query");
    request.query = request.query.replace("b=2", "b=3");
    assert_invalid(check(&request, &secret, now), SIGNATURE_MISMATCH);

    let (mut request, secret, now) = botocore("path-to-encode-and-query");
    request.path = request.path.replace("%20", "+");
    assert_invalid(check(&request, &secret, now), SIGNATURE_MISMATCH);
}

#[test]
fn host_and_action_headers_must_be_signed() {
    let (mut request, secret, now) = botocore("list-clusters");
    for (signed, missing) in [
        ("content-type;x-amz-date;x-amz-target", "host"),
        ("content-type;host;x-amz-target", "x-amz-date"),
        ("content-type;host;x-amz-date", "x-amz-target"),
    ] {
        request.sign(&secret, signed);
        assert_invalid(
            check(&request, &secret, now),
            &format!("'{missing}' must be a 'SignedHeader' in the AWS Authorization."),
        );
    }
    // The signer itself is sound: with every required header signed, the request verifies.
    request.sign(&secret, "content-type;host;x-amz-date;x-amz-target");
    check(&request, &secret, now).expect("own signature");
}

#[test]
fn clock_skew_beyond_15_minutes_either_way_is_refused() {
    let (request, secret, now) = botocore("list-clusters");
    let minutes = |n: u64| Duration::from_secs(n * 60);
    check(&request, &secret, now + minutes(15)).expect("15 min late is allowed");
    check(&request, &secret, now - minutes(15)).expect("15 min early is allowed");
    assert_invalid(
        check(&request, &secret, now + minutes(16)),
        "Signature expired: 20261122T091500Z is now earlier than 20261122T091600Z \
         (20261122T093100Z - 15 min.)",
    );
    assert_invalid(
        check(&request, &secret, now - minutes(16)),
        "Signature not yet current: 20261122T091500Z is still later than 20261122T091400Z \
         (20261122T085900Z + 15 min.)",
    );
}

#[test]
fn scope_date_must_be_the_request_date() {
    let (mut request, secret, now) = botocore("list-clusters");
    let authorization = request.headers[AUTHORIZATION].to_str().expect("ascii");
    let authorization = authorization.replace("/20261122/", "/20261121/");
    request.headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&authorization).expect("header"),
    );
    assert_invalid(
        check(&request, &secret, now),
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from \
         HTTP: '20261121' != '20261122', from '20261122T091500Z'.",
    );
}

#[test]
fn scope_must_name_our_region_and_service() {
    let (request, secret, now) = botocore("list-clusters");
    assert_invalid(
        request.check(&secret, now, "us-east-1", "ecs"),
        "Credential should be scoped to a valid region, not 'eu-west-3'.",
    );
    assert_invalid(
        request.check(&secret, now, "eu-west-3", "sqs"),
        "Credential should be scoped to correct service: 'sqs'.",
    );
}

#[test]
fn content_sha256_header_must_match_the_body() {
    let (mut request, secret, now) = botocore("content-sha256-header");
    request.body = b"{\"clusters\":[\"other\"]}".to_vec();
    assert_invalid(
        check(&request, &secret, now),
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
    );
    request.headers.insert(
        "x-amz-content-sha256",
        HeaderValue::from_static("UNSIGNED-PAYLOAD"),
    );
    assert_invalid(
        check(&request, &secret, now),
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
    );
}

#[test]
fn missing_authorization_is_missing_authentication_token() {
    let (mut request, secret, now) = botocore("list-clusters");
    request.headers.remove(AUTHORIZATION);
    let error = check(&request, &secret, now).expect_err("unsigned");
    assert!(
        matches!(error, SigV4Error::MissingAuthenticationToken),
        "{error:?}"
    );
    assert_eq!(error.aws_type(), "MissingAuthenticationTokenException");
    assert_eq!(error.to_string(), "Missing Authentication Token");
}

#[test]
fn security_token_is_unrecognized_client() {
    let (mut request, secret, now) = botocore("list-clusters");
    let auth = parse_authorization(&request.headers).expect("parse");
    request.headers.insert(
        "x-amz-security-token",
        HeaderValue::from_static("FwoGZXIvYXdzEXAMPLE"),
    );
    for result in [
        parse_authorization(&request.headers).map(drop),
        verify(&request.request(), &auth, &secret, now, "eu-west-3", "ecs"),
    ] {
        let error = result.expect_err("session token");
        assert!(matches!(error, SigV4Error::UnrecognizedClient), "{error:?}");
        assert_eq!(error.aws_type(), "UnrecognizedClientException");
        assert_eq!(
            error.to_string(),
            "The security token included in the request is invalid."
        );
    }
}

#[test]
fn malformed_authorization_headers_are_incomplete_signatures() {
    const SIG: &str = "Signature=073aacb878cb0763fdcd89fa954c7af101785a602018e70bea31b02a39b4b8ae";
    const CRED: &str = "Credential=AKIASKIFFEXAMPLE0001/20261122/eu-west-3/ecs/aws4_request";
    let cases: &[(String, String)] = &[
        (
            format!("AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, {SIG}"),
            format!(
                "Authorization header requires 'Credential' parameter. \
                 Authorization=AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, {SIG}"
            ),
        ),
        (
            format!("AWS4-HMAC-SHA256 {CRED}, Signature="),
            format!(
                "Authorization header requires 'SignedHeaders' parameter. Authorization header \
                 requires 'Signature' parameter. Authorization=AWS4-HMAC-SHA256 {CRED}, Signature="
            ),
        ),
        (
            "AWS4-HMAC-SHA256".to_owned(),
            "Authorization header requires 'Credential' parameter. Authorization header requires \
             'SignedHeaders' parameter. Authorization header requires 'Signature' parameter. \
             Authorization=AWS4-HMAC-SHA256"
                .to_owned(),
        ),
        (
            format!("AWS4-HMAC-SHA256 {CRED} SignedHeaders=host, {SIG}"),
            format!(
                "Authorization header requires 'SignedHeaders' parameter. \
                 Authorization=AWS4-HMAC-SHA256 {CRED} SignedHeaders=host, {SIG}"
            ),
        ),
        (
            format!("AWS4-HMAC-SHA256 {CRED}, SignedHeaders, {SIG}"),
            format!(
                "'SignedHeaders' not a valid key=value pair (missing equal-sign) in Authorization \
                 header: 'AWS4-HMAC-SHA256 {CRED}, SignedHeaders, {SIG}'."
            ),
        ),
        (
            format!("AWS4-HMAC-SHA256 {CRED}, {CRED}, SignedHeaders=host, {SIG}"),
            format!(
                "Authorization header has more than one 'Credential' parameter: \
                 'AWS4-HMAC-SHA256 {CRED}, {CRED}, SignedHeaders=host, {SIG}'."
            ),
        ),
        (
            format!("AWS4-HMAC-SHA256 {CRED}, SignedHeaders=host, {SIG}, Expires=60"),
            format!(
                "Unknown parameter 'Expires' in Authorization header: \
                 'AWS4-HMAC-SHA256 {CRED}, SignedHeaders=host, {SIG}, Expires=60'."
            ),
        ),
        (
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIASKIFFEXAMPLE0001/20261122/eu-west-3/ecs, SignedHeaders=host, {SIG}"
            ),
            "Credential must have exactly 5 slash-delimited elements, e.g. \
             keyid/date/region/service/term, got 'AKIASKIFFEXAMPLE0001/20261122/eu-west-3/ecs'"
                .to_owned(),
        ),
        (
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIASKIFFEXAMPLE0001/20261122/eu-west-3/ecs/aws4_requests, SignedHeaders=host, {SIG}"
            ),
            "Credential should be scoped with a valid terminator: 'aws4_request', not \
             'aws4_requests'."
                .to_owned(),
        ),
        (
            format!("AWS4-HMAC-SHA256 {CRED}, SignedHeaders=host;;x-amz-date, {SIG}"),
            format!(
                "SignedHeaders holds an invalid header name '': \
                 'AWS4-HMAC-SHA256 {CRED}, SignedHeaders=host;;x-amz-date, {SIG}'."
            ),
        ),
        (
            format!("AWS4-HMAC-SHA512 {CRED}, SignedHeaders=host, {SIG}"),
            "Unsupported AWS 'algorithm': 'AWS4-HMAC-SHA512'; only AWS4-HMAC-SHA256 is accepted."
                .to_owned(),
        ),
        (
            "Basic dXNlcjpwYXNz".to_owned(),
            "Unsupported AWS 'algorithm': 'Basic'; only AWS4-HMAC-SHA256 is accepted.".to_owned(),
        ),
    ];
    for (header, message) in cases {
        let headers = header_map([("Authorization", header.as_str())]);
        assert_incomplete(parse_authorization(&headers), message);
    }

    let twice = header_map([
        (
            "Authorization",
            format!("AWS4-HMAC-SHA256 {CRED}, SignedHeaders=host, {SIG}").as_str(),
        ),
        ("Authorization", "AWS4-HMAC-SHA256"),
    ]);
    assert_incomplete(
        parse_authorization(&twice),
        "Only one Authorization header may be sent.",
    );

    let mut binary = HeaderMap::new();
    binary.insert(
        AUTHORIZATION,
        HeaderValue::from_bytes(b"AWS4-HMAC-SHA256 \xff").expect("obs-text"),
    );
    assert_incomplete(
        parse_authorization(&binary),
        "The Authorization header must be printable ASCII.",
    );
}

#[test]
fn signed_header_names_are_lowercased() {
    let headers = header_map([(
        "Authorization",
        "AWS4-HMAC-SHA256 Credential=K/20261122/eu-west-3/ecs/aws4_request, \
         SignedHeaders=Host;X-Amz-Date, Signature=00",
    )]);
    let auth = parse_authorization(&headers).expect("parse");
    assert_eq!(auth.signed_headers, ["host", "x-amz-date"]);
}

#[test]
fn request_time_must_be_given_and_well_formed() {
    let (mut request, secret, now) = botocore("list-clusters");
    for bad in [
        "2026-11-22T09:15:00Z",
        "20261122T091500",
        "20261131T091500Z",
        "20261122T246000Z",
    ] {
        request
            .headers
            .insert(X_AMZ_DATE, HeaderValue::from_static(bad));
        assert_incomplete(
            check(&request, &secret, now),
            &format!(
                "Date must be in ISO-8601 'basic format'. Got '{bad}'. See \
                 http://en.wikipedia.org/wiki/ISO_8601"
            ),
        );
    }
    request.headers.remove(X_AMZ_DATE);
    assert_incomplete(
        check(&request, &secret, now),
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
    );
    request.headers.insert(
        DATE,
        HeaderValue::from_static("Sunday, 22-Nov-26 09:15:00 GMT"),
    );
    assert_incomplete(
        check(&request, &secret, now),
        "Date header must be in RFC 1123 format, e.g. 'Sun, 30 Aug 2015 12:36:00 GMT'. Got \
         'Sunday, 22-Nov-26 09:15:00 GMT'.",
    );
}

// ---- the pieces --------------------------------------------------------------------------------

#[test]
fn canonical_uri_normalises_and_encodes() {
    for (path, canonical) in [
        ("", "/"),
        ("/", "/"),
        ("//", "/"),
        ("/a/./b/../c/", "/a/c/"),
        ("/..", "/"),
        ("/a%20b/c~d", "/a%2520b/c~d"),
        ("/x:y/café", "/x%3Ay/caf%C3%A9"),
    ] {
        assert_eq!(canonical_uri(path), canonical, "{path:?}");
    }
}

#[test]
fn canonical_query_decodes_reencodes_and_sorts() {
    assert_eq!(canonical_query(""), "");
    assert_eq!(
        canonical_query("b=2&a=%2f1&a=0&c&empty=&sp=a b&pct=100%&plus=a+b"),
        "a=%2F1&a=0&b=2&c=&empty=&pct=100%25&plus=a%2Bb&sp=a%20b"
    );
}

#[test]
fn dates_convert_both_ways() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(parse_basic("20150830T123600Z"), Some(1_440_938_160));
    assert_eq!(format_basic(1_440_938_160), "20150830T123600Z");
    assert_eq!(parse_basic("20240229T000000Z"), Some(1_709_164_800));
    assert_eq!(parse_basic("20230229T000000Z"), None);
    assert_eq!(parse_basic("20150830T123600Zx"), None);
    assert_eq!(parse_basic("2015083+T123600Z"), None);
    for days in (-800_000..800_000).step_by(997) {
        let (year, month, day) = civil_from_days(days);
        assert_eq!(days_from_civil(year, month, day), days);
    }
    for text in [
        "Sun, 30 Aug 2015 12:36:00 GMT",
        "30 Aug 2015 12:36:00 GMT",
        "Sun, 30 Aug 2015 12:36:00 -0000",
    ] {
        assert_eq!(parse_http_date(text), Some(1_440_938_160), "{text}");
    }
    for text in [
        "Sun, 30 Aug 15 12:36:00 GMT",
        "Sun, 30 Aug 2015 12:36 GMT",
        "Sun, 31 Sep 2015 12:36:00 GMT",
        "Sun, 30 Aug 2015 12:36:00 CET",
    ] {
        assert_eq!(parse_http_date(text), None, "{text}");
    }
}

#[test]
fn hand_built_authorizations_are_refused_without_panicking() {
    let (request, secret, now) = botocore("list-clusters");
    let mut auth = parse_authorization(&request.headers).expect("parse");
    auth.signed_headers = [
        "content-type",
        "host",
        "x-amz-date",
        "x-amz-target",
        "not a name",
    ]
    .map(str::to_owned)
    .to_vec();
    for signature in ["", "00", "é", &"f".repeat(1000)] {
        auth.signature = signature.to_owned();
        assert_invalid(
            verify(&request.request(), &auth, &secret, now, "eu-west-3", "ecs"),
            SIGNATURE_MISMATCH,
        );
    }
    auth.date = "é".to_owned();
    assert_invalid(
        verify(&request.request(), &auth, &secret, now, "eu-west-3", "ecs"),
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from \
         HTTP: 'é' != '20261122', from '20261122T091500Z'.",
    );
}
