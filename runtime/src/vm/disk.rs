//! A container's root filesystem as a VM disk: the merged overlay the image store mounts for
//! the container (layers and whiteouts applied) copied into a sparse ext4 image by
//! `mkfs.ext4 -d`, which reads a directory and writes the filesystem without mounting
//! anything. No journal (the disk lives and dies with the task), and room to write: the image
//! is sparse, so the free space costs nothing until the container uses it.

use std::path::Path;

use super::{VmError, io};

/// Free space given to a container beyond what its image holds, MiB.
pub const WRITABLE_MIB: u64 = 1024;

/// Copies `rootfs` into a new ext4 image at `image`.
pub async fn make(rootfs: &Path, image: &Path) -> Result<(), VmError> {
    // Mount points the guest agent uses: an image may lack them.
    for d in ["dev", "proc"] {
        let p = rootfs.join(d);
        match std::fs::create_dir(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create", &p)(e)),
        }
    }
    let root = rootfs.to_owned();
    let used = tokio::task::spawn_blocking(move || tree_size(&root))
        .await
        .expect("size task");
    // ext4's own metadata (inode tables, bitmaps) needs about a tenth more.
    let size = (used + used / 8 + ((WRITABLE_MIB + 16) << 20)).next_multiple_of(1 << 20);
    let file = std::fs::File::create(image).map_err(io("create", image))?;
    file.set_len(size).map_err(io("size", image))?;
    drop(file);
    let out = tokio::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-m", "0"])
        .args(["-E", "root_owner=0:0,lazy_itable_init=1"])
        .arg("-d")
        .arg(rootfs)
        .arg(image)
        .output()
        .await
        .map_err(|e| VmError::Disk {
            rootfs: rootfs.to_owned(),
            message: format!("running mkfs.ext4 (e2fsprogs): {e}"),
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(image);
        return Err(VmError::Disk {
            rootfs: rootfs.to_owned(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Bytes of the files under `dir` (not following symlinks), each rounded up to a 4 KiB block.
fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            total += m.len().next_multiple_of(4096).max(4096);
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_count_blocks_of_every_file() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), vec![0u8; 5000]).unwrap();
        std::fs::write(t.path().join("g"), b"x").unwrap();
        std::os::unix::fs::symlink("/nowhere", t.path().join("l")).unwrap();
        // d (a block), d/f (two), g (one), l (one).
        assert_eq!(tree_size(t.path()), 5 * 4096);
    }
}
