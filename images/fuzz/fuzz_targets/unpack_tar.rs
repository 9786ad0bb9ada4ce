//! Arbitrary bytes as an uncompressed layer tar. Whatever the input, the unpacker must not
//! panic, must not write outside the layer directory (nor into the lower layer, whose symlinks
//! lead out of it), and must not spend more than its byte budget.
//!
//! Header checksums are recomputed before unpacking, so that mutations reach the unpacker
//! instead of stopping at the tar reader's checksum check.

#![no_main]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use skiff_images::config::Limits;
use skiff_images::unpack::unpack_tar;

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::Builder::new()
        .prefix("skiff-fuzz-")
        .tempdir()
        .expect("creating a temporary directory");
    let root = tmp.path();
    let dest = root.join("layer");
    let lower = root.join("lower");
    fs::create_dir(&dest).unwrap();
    fs::create_dir_all(lower.join("usr")).unwrap();
    // A lower layer with symlinks that a write must never go through.
    symlink(root, lower.join("etc")).unwrap();
    symlink("../..", lower.join("usr/lib")).unwrap();
    let before = listing(root, &dest);

    let limits = Limits {
        max_image_bytes: 1 << 20,
        max_layer_entries: 256,
        max_path_bytes: 256,
        ..Limits::default()
    };
    let mut budget = limits.max_image_bytes;
    let tar = with_checksums(data);
    let result = unpack_tar(
        &tar[..],
        &dest,
        std::slice::from_ref(&lower),
        &limits,
        &mut budget,
    );

    assert!(budget <= limits.max_image_bytes);
    if let Ok(u) = &result {
        assert_eq!(u.bytes, limits.max_image_bytes - budget);
    }
    assert_eq!(
        before,
        listing(root, &dest),
        "something changed outside the layer directory: {result:?}"
    );
    drop(tmp); // removes the directory, layer included
});

/// Names, types and link targets of everything under `root` except inside `skip`.
fn listing(root: &Path, skip: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let md = fs::symlink_metadata(&path).unwrap();
            let target = fs::read_link(&path).ok();
            out.push(format!("{path:?} {:?} {target:?}", md.file_type()));
            if md.is_dir() && path != skip {
                stack.push(path);
            }
        }
    }
    out
}

/// `data` with the checksum of every block that the tar reader will take for a header
/// recomputed: blocks are walked as the reader walks them, by the octal size in each header.
fn with_checksums(data: &[u8]) -> Vec<u8> {
    let mut tar = data.to_vec();
    let mut off = 0usize;
    while off + 512 <= tar.len() {
        let block = &mut tar[off..off + 512];
        if block.iter().all(|b| *b == 0) {
            off += 512;
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let size = octal(&block[124..136]).unwrap_or(0);
        let Some(next) = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_add(511))
            .map(|s| s / 512 * 512)
            .and_then(|s| off.checked_add(512 + s))
        else {
            break;
        };
        off = next;
    }
    tar
}

fn octal(field: &[u8]) -> Option<u64> {
    let digits = std::str::from_utf8(field).ok()?;
    let digits = digits.trim_matches(|c: char| c == ' ' || c == '\0');
    u64::from_str_radix(digits, 8).ok()
}
