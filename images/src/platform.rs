//! Platforms (`linux/amd64`, `linux/arm64/v8`) and the choice of one manifest from an index.
//!
//! Matching follows containerd's normalisation: architecture aliases (`x86_64` = `amd64`,
//! `aarch64` = `arm64`) are folded, and an arm64 entry without a variant counts as `v8`, which is
//! how most multi-arch images publish it. An index with nothing for the wanted platform is an
//! error that lists what the image does offer, so a user sees at once why a pull failed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A platform string that is not `os/arch[/variant]`.
#[derive(Debug, thiserror::Error)]
#[error("invalid platform {value:?}: expected os/arch[/variant], e.g. linux/arm64/v8")]
pub struct PlatformError {
    /// The rejected text.
    pub value: String,
}

/// An operating system, architecture and optional variant, normalised.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, `arm`, ...
    pub architecture: String,
    /// `v8` for arm64, `v7` for arm, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Builds a normalised platform from the fields of an index entry or image config.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let architecture = match architecture {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            "armhf" => "arm",
            other => other,
        }
        .to_owned();
        let variant = match (architecture.as_str(), variant) {
            ("arm64", None | Some("") | Some("8") | Some("v8")) => Some("v8".to_owned()),
            (_, Some("")) | (_, None) => None,
            (_, Some(v)) => Some(v.to_owned()),
        };
        Self {
            os: os.to_owned(),
            architecture,
            variant,
        }
    }

    /// The platform of the machine this runs on.
    pub fn host() -> Self {
        Self::new("linux", std::env::consts::ARCH, None)
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| !p.is_empty();
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Self::new(os, arch, None)),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => {
                Ok(Self::new(os, arch, Some(variant)))
            }
            _ => Err(PlatformError {
                value: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The platform of an index entry, if it declares one.
pub fn of_descriptor(d: &oci_spec::image::Descriptor) -> Option<Platform> {
    d.platform().as_ref().map(|p| {
        Platform::new(
            &p.os().to_string(),
            &p.architecture().to_string(),
            p.variant().as_deref(),
        )
    })
}

/// Picks the first manifest of `manifests` for `want`; attestation manifests (BuildKit's
/// `unknown/unknown`) never match. On no match, returns every platform offered.
pub fn select<'a>(
    manifests: &'a [oci_spec::image::Descriptor],
    want: &Platform,
) -> Result<&'a oci_spec::image::Descriptor, Vec<Platform>> {
    manifests
        .iter()
        .find(|d| of_descriptor(d).as_ref() == Some(want))
        .ok_or_else(|| manifests.iter().filter_map(of_descriptor).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_normalise() {
        let p: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert_eq!(p, "linux/aarch64/v8".parse().unwrap());
        assert_eq!(
            "linux/x86_64".parse::<Platform>().unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            "linux/arm/v7".parse::<Platform>().unwrap().to_string(),
            "linux/arm/v7"
        );
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux//v8"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }
}
