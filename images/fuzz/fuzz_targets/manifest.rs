//! Arbitrary bytes as the documents a pull parses: OCI/Docker manifests, indexes (manifest
//! lists) and image configurations, platform strings and image references. Parsing must never
//! panic, and what the pull pipeline derives from a parsed document must not either.

#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use skiff_images::digest::Digest;
use skiff_images::platform::{self, Platform};
use skiff_images::{compression_of, reference};

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = serde_json::from_slice::<ImageManifest>(data) {
        descriptor(manifest.config());
        for layer in manifest.layers() {
            descriptor(layer);
            let _ = compression_of(&layer.media_type().to_string());
        }
    }
    if let Ok(index) = serde_json::from_slice::<ImageIndex>(data) {
        for d in index.manifests() {
            descriptor(d);
        }
        let _ = platform::select(index.manifests(), &Platform::host());
        let _ = platform::select(index.manifests(), &Platform::new("linux", "arm64", None));
    }
    if let Ok(config) = serde_json::from_slice::<ImageConfiguration>(data) {
        let p = Platform::new(
            &config.os().to_string(),
            &config.architecture().to_string(),
            config.variant().as_deref(),
        );
        let _ = p.to_string();
        let _ = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| d.parse::<Digest>())
            .count();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(p) = text.parse::<Platform>() {
            // What is printed parses back to the same platform.
            assert_eq!(
                p.to_string().parse::<Platform>().ok(),
                Some(p.clone()),
                "{text:?}"
            );
        }
        if let Ok(r) = reference::parse_reference(text) {
            let _ = reference::canonical_name(&r);
            let _ = reference::repository_name(&r);
        }
        if let Ok(d) = text.parse::<Digest>() {
            assert_eq!(d.to_string(), text);
        }
    }
});

/// What the pull derives from a descriptor: its digest, checked, and its platform.
fn descriptor(d: &Descriptor) {
    let _ = d.digest().to_string().parse::<Digest>();
    let _ = platform::of_descriptor(d);
}
