//! Image references as users write them (`busybox`, `docker.io/library/busybox:1.36`,
//! `localhost:5000/team/app@sha256:...`), parsed by the grammar of the distribution project's
//! `reference` package, with Docker Hub defaults (`docker.io`, `library/`, `latest`).
//!
//! Hand-written rather than `oci_spec::distribution::Reference::from_str`: that one compiles a
//! very large regular expression on first use, which cost every `skiff` command about 46 ms of
//! CPU and 18 MiB of peak memory (measured with `perf stat` and GNU time, docs/benchmarks.md),
//! more than a whole warm pull. The parsed value is still oci-spec's `Reference`, which
//! `oci-client` takes.

use oci_client::Reference;

use crate::digest::Digest;

const DOCKER_HUB: &str = "docker.io";
const MAX_NAME: usize = 255;

/// Why a reference does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReferenceError(String);

fn err(msg: impl Into<String>) -> ReferenceError {
    ReferenceError(msg.into())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: one path component of a repository name.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or any number of "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// A registry host: DNS labels or an IPv6 literal in brackets, with an optional port.
fn valid_domain(d: &str) -> bool {
    let valid_port = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = d.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return false;
        };
        let ip = !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        return ip && (after.is_empty() || after.strip_prefix(':').is_some_and(valid_port));
    }
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
    };
    port.is_none_or(valid_port) && !host.is_empty() && host.split('.').all(label)
}

/// `[\w][\w.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
}

/// Parses a reference, normalising Docker Hub names (`busybox` is
/// `docker.io/library/busybox:latest`).
pub fn parse_reference(s: &str) -> Result<Reference, ReferenceError> {
    if s.is_empty() {
        return Err(err("empty reference"));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            let digest: Digest = d
                .parse()
                .map_err(|e: crate::digest::DigestError| err(e.to_string()))?;
            (r, Some(digest))
        }
        None => (s, None),
    };
    // A tag is after the last ':' that follows the last '/' (a port's ':' precedes a '/').
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(t) = tag.filter(|t| !valid_tag(t)) {
        return Err(err(format!("invalid tag {t:?}")));
    }
    let (domain, path) = match name.split_once('/') {
        Some((first, path))
            if first.contains(['.', ':']) || first == "localhost" || first.starts_with('[') =>
        {
            (first, path.to_owned())
        }
        _ => (DOCKER_HUB, name.to_owned()),
    };
    let domain = if domain == "index.docker.io" {
        DOCKER_HUB
    } else {
        domain
    };
    if !valid_domain(domain) {
        return Err(err(format!("invalid registry host {domain:?}")));
    }
    let path = if domain == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    if let Some(c) = path.split('/').find(|c| !valid_component(c)) {
        return Err(err(if c.bytes().any(|b| b.is_ascii_uppercase()) {
            format!("repository name {path:?} must be lowercase")
        } else {
            format!("invalid repository name component {c:?}")
        }));
    }
    if domain.len() + 1 + path.len() > MAX_NAME {
        return Err(err(format!(
            "repository name longer than {MAX_NAME} characters"
        )));
    }
    let (domain, tag) = (domain.to_owned(), tag.map(str::to_owned));
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(domain, path, t, d.to_string()),
        (None, Some(d)) => Reference::with_digest(domain, path, d.to_string()),
        (Some(t), None) => Reference::with_tag(domain, path, t),
        (None, None) => Reference::with_tag(domain, path, "latest".to_owned()),
    })
}

/// The canonical name of a reference: `registry/repository:tag` or `...@digest`.
pub fn canonical_name(r: &Reference) -> String {
    match (r.tag(), r.digest()) {
        (_, Some(d)) => format!("{}/{}@{d}", r.registry(), r.repository()),
        (Some(t), None) => format!("{}/{}:{t}", r.registry(), r.repository()),
        (None, None) => format!("{}/{}:latest", r.registry(), r.repository()),
    }
}

/// `registry/repository` of a reference.
pub fn repository_name(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn references_as_users_write_them() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest".to_owned()),
            (
                "docker.io/library/busybox:1.36",
                "docker.io/library/busybox:1.36".into(),
            ),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest".into(),
            ),
            ("team/app:v2", "docker.io/team/app:v2".into()),
            ("localhost/app", "localhost/app:latest".into()),
            (
                "localhost:5000/team/app:1.0",
                "localhost:5000/team/app:1.0".into(),
            ),
            ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000/a/b/c:latest".into()),
            ("[::1]:5000/app:x", "[::1]:5000/app:x".into()),
            (
                "registry.local/my-app_x.y__z",
                "registry.local/my-app_x.y__z:latest".into(),
            ),
            (
                &*format!("localhost:5000/team/app@{D}"),
                format!("localhost:5000/team/app@{D}"),
            ),
            (
                &*format!("busybox:1.36@{D}"),
                format!("docker.io/library/busybox@{D}"),
            ),
        ];
        for (input, want) in cases {
            let r = parse_reference(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(canonical_name(&r), want, "{input}");
        }
        assert_eq!(parse_reference("busybox:1.36").unwrap().tag(), Some("1.36"));
    }

    #[test]
    fn bad_references_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("has space", "invalid repository name component"),
            ("Busybox", "must be lowercase"),
            ("repo:tag@sha256:short", "invalid digest"),
            ("repo:-tag", "invalid tag"),
            ("a//b", "invalid repository name component"),
            ("bad_host.com:x/app", "invalid registry host"),
            ("app-", "invalid repository name component"),
        ] {
            let e = parse_reference(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(
            parse_reference(&"a".repeat(300))
                .unwrap_err()
                .to_string()
                .contains("longer than")
        );
    }
}
