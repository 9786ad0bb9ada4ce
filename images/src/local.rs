//! Air-gapped sources: an OCI image layout directory, and a `docker save` tarball (the legacy
//! `manifest.json` format, or the OCI layout inside that Docker 25+ writes).
//!
//! Both are read in place: a tarball is scanned once for the offset of each file and blobs are
//! then read by seeking, so loading a multi-gigabyte archive needs no scratch space. A legacy
//! archive has no manifest; one is synthesised (OCI media types, digests of the layer tars as
//! written), so everything downstream, store and unpack included, is the same as for a pull.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::{Digest, Hasher};
use crate::reference::{canonical_name, parse_reference};
use crate::store::{Ingest, StoreError};

/// Errors reading a local image source.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A file of the source could not be read.
    #[error("{source_path}: cannot read {file}")]
    Read {
        /// The layout directory or archive.
        source_path: PathBuf,
        /// The file inside it.
        file: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The source is neither an OCI layout nor a docker archive.
    #[error(
        "{path}: not an OCI image layout (no index.json) nor a docker save archive (no manifest.json)"
    )]
    NotAnImage {
        /// The path given.
        path: PathBuf,
    },
    /// A document of the source is malformed.
    #[error("{path}: invalid {file}: {message}")]
    Invalid {
        /// The source.
        path: PathBuf,
        /// The file.
        file: String,
        /// What was wrong.
        message: String,
    },
    /// A blob's content does not match its digest.
    #[error("{path}: blob {digest} does not match its digest")]
    Corrupt {
        /// The source.
        path: PathBuf,
        /// The blob.
        digest: Digest,
    },
    /// An image of the source has no usable name.
    #[error("{path}: image {index} has no name (annotation {annotation:?}); give one with --name")]
    Unnamed {
        /// The source.
        path: PathBuf,
        /// Its position in the index.
        index: usize,
        /// What the annotation said, if anything.
        annotation: Option<String>,
    },
    /// Writing into the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

enum Files {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        /// path inside the archive -> (offset, size)
        entries: HashMap<String, (u64, u64)>,
    },
}

impl Files {
    fn origin(&self) -> &Path {
        match self {
            Self::Dir(p) | Self::Tar { path: p, .. } => p,
        }
    }

    fn open(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64), LocalError> {
        let err = |source| LocalError::Read {
            source_path: self.origin().to_owned(),
            file: name.to_owned(),
            source,
        };
        match self {
            Self::Dir(dir) => {
                let f = File::open(dir.join(name)).map_err(err)?;
                let len = f.metadata().map_err(err)?.len();
                Ok((Box::new(f), len))
            }
            Self::Tar { path, entries } => {
                let (off, len) = *entries
                    .get(name)
                    .ok_or_else(|| err(io::ErrorKind::NotFound.into()))?;
                let mut f = File::open(path).map_err(err)?;
                f.seek(SeekFrom::Start(off)).map_err(err)?;
                Ok((Box::new(f.take(len)), len))
            }
        }
    }

    fn read(&self, name: &str, max: u64) -> Result<Vec<u8>, LocalError> {
        let (r, len) = self.open(name)?;
        if len > max {
            return Err(LocalError::Invalid {
                path: self.origin().to_owned(),
                file: name.to_owned(),
                message: format!("{len} bytes exceeds the {max}-byte document limit"),
            });
        }
        let mut buf = Vec::with_capacity(len as usize);
        r.take(max)
            .read_to_end(&mut buf)
            .map_err(|source| LocalError::Read {
                source_path: self.origin().to_owned(),
                file: name.to_owned(),
                source,
            })?;
        Ok(buf)
    }

    fn exists(&self, name: &str) -> bool {
        match self {
            Self::Dir(dir) => dir.join(name).is_file(),
            Self::Tar { entries, .. } => entries.contains_key(name),
        }
    }

    fn scan_tar(path: &Path) -> Result<Self, LocalError> {
        let err = |source| LocalError::Read {
            source_path: path.to_owned(),
            file: String::new(),
            source,
        };
        let mut archive = tar::Archive::new(File::open(path).map_err(err)?);
        let mut entries = HashMap::new();
        let mut links = Vec::new();
        for entry in archive.entries().map_err(err)? {
            let entry = entry.map_err(err)?;
            let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    entries.insert(name, (entry.raw_file_position(), entry.size()));
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    // docker save links layers shared by several images.
                    let target =
                        String::from_utf8_lossy(&entry.link_name_bytes().unwrap_or_default())
                            .into_owned();
                    let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                        name.rsplit_once('/')
                            .map(|(d, _)| d.to_owned())
                            .unwrap_or_default()
                    } else {
                        String::new()
                    };
                    links.push((name, normalize(&format!("{base}/{target}"))));
                }
                _ => {}
            }
        }
        for (name, target) in links {
            if let Some(v) = entries.get(&target).copied() {
                entries.insert(name, v);
            }
        }
        Ok(Self::Tar {
            path: path.to_owned(),
            entries,
        })
    }
}

/// Resolves `.` and `..` lexically inside the archive's namespace.
fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            x => out.push(x),
        }
    }
    out.join("/")
}

/// One image found in a local source.
#[derive(Clone, Debug)]
pub struct LocalImage {
    /// Its canonical name.
    pub name: String,
    /// The digest of its manifest or index.
    pub digest: Digest,
}

/// An OCI layout or docker archive, opened.
pub struct LocalSource {
    files: Files,
    /// Digest -> path inside the source, for blobs not at `blobs/sha256/<hex>`.
    paths: HashMap<Digest, String>,
    /// Documents that exist only in memory (synthesised manifests).
    synthetic: HashMap<Digest, Vec<u8>>,
    max_document: u64,
}

impl std::fmt::Debug for LocalSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSource")
            .field("origin", &self.files.origin())
            .finish()
    }
}

#[derive(Deserialize)]
struct LegacyManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

impl LocalSource {
    /// Opens `path` (a directory or a tarball) and lists its images. `name` names an image that
    /// carries no full name of its own (a bare tag, as skopeo writes, is appended to it).
    pub fn open(
        path: &Path,
        name: Option<&str>,
        max_document: u64,
    ) -> Result<(Self, Vec<LocalImage>), LocalError> {
        let files = if path.is_dir() {
            Files::Dir(path.to_owned())
        } else {
            Files::scan_tar(path)?
        };
        let mut src = Self {
            files,
            paths: HashMap::new(),
            synthetic: HashMap::new(),
            max_document,
        };
        let images = if src.files.exists("index.json") {
            src.oci_images(name)?
        } else if src.files.exists("manifest.json") {
            src.legacy_images(name)?
        } else {
            return Err(LocalError::NotAnImage {
                path: path.to_owned(),
            });
        };
        Ok((src, images))
    }

    fn invalid(&self, file: &str, message: impl std::fmt::Display) -> LocalError {
        LocalError::Invalid {
            path: self.files.origin().to_owned(),
            file: file.to_owned(),
            message: message.to_string(),
        }
    }

    fn oci_images(&self, name: Option<&str>) -> Result<Vec<LocalImage>, LocalError> {
        let data = self.files.read("index.json", self.max_document)?;
        let index: oci_spec::image::ImageIndex =
            serde_json::from_slice(&data).map_err(|e| self.invalid("index.json", e))?;
        let mut out = Vec::new();
        for (i, d) in index.manifests().iter().enumerate() {
            let ann = d.annotations().as_ref();
            let full = ann.and_then(|a| a.get("io.containerd.image.name")).cloned();
            let ref_name = ann
                .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                .cloned();
            let is_tag = |s: &str| !s.contains('/') && !s.contains(':') && !s.contains('@');
            let chosen = match (name, full, ref_name) {
                (Some(n), _, Some(tag)) if is_tag(&tag) => Some(format!("{n}:{tag}")),
                (Some(n), _, _) => Some(n.to_owned()),
                (None, Some(full), _) => Some(full),
                (None, None, Some(r)) if !is_tag(&r) => Some(r),
                (None, None, r) => {
                    return Err(LocalError::Unnamed {
                        path: self.files.origin().to_owned(),
                        index: i,
                        annotation: r,
                    });
                }
            };
            let chosen = chosen.expect("every arm names or returns");
            let digest: Digest = d
                .digest()
                .to_string()
                .parse()
                .map_err(|e| self.invalid("index.json", e))?;
            out.push(LocalImage {
                name: self.canonical(&chosen)?,
                digest,
            });
        }
        Ok(out)
    }

    fn canonical(&self, name: &str) -> Result<String, LocalError> {
        parse_reference(name)
            .map(|r| canonical_name(&r))
            .map_err(|e| self.invalid("image name", format!("{name:?}: {e}")))
    }

    fn legacy_images(&mut self, name: Option<&str>) -> Result<Vec<LocalImage>, LocalError> {
        let data = self.files.read("manifest.json", self.max_document)?;
        let manifests: Vec<LegacyManifest> =
            serde_json::from_slice(&data).map_err(|e| self.invalid("manifest.json", e))?;
        let mut out = Vec::new();
        for (i, m) in manifests.iter().enumerate() {
            let config = self.files.read(&normalize(&m.config), self.max_document)?;
            let config_digest = Digest::of(&config);
            self.paths
                .insert(config_digest.clone(), normalize(&m.config));
            let mut layers = Vec::new();
            for l in &m.layers {
                let path = normalize(l);
                let (mut r, size) = self.files.open(&path)?;
                let (digest, magic) =
                    hash_with_magic(&mut r).map_err(|source| LocalError::Read {
                        source_path: self.files.origin().to_owned(),
                        file: path.clone(),
                        source,
                    })?;
                let media_type = match magic {
                    [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
                    [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
                    _ => "application/vnd.oci.image.layer.v1.tar",
                };
                layers.push(serde_json::json!({"mediaType": media_type, "digest": digest.to_string(), "size": size}));
                self.paths.insert(digest, path);
            }
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest.to_string(),
                    "size": config.len(),
                },
                "layers": layers,
            }))
            .expect("json serializes");
            let digest = Digest::of(&manifest);
            self.synthetic.insert(digest.clone(), manifest);
            let tags: Vec<String> = m.repo_tags.clone().unwrap_or_default();
            let names: Vec<String> = match (name, tags.is_empty()) {
                (Some(n), _) => vec![n.to_owned()],
                (None, false) => tags,
                (None, true) => {
                    return Err(LocalError::Unnamed {
                        path: self.files.origin().to_owned(),
                        index: i,
                        annotation: None,
                    });
                }
            };
            for n in names {
                out.push(LocalImage {
                    name: self.canonical(&n)?,
                    digest: digest.clone(),
                });
            }
        }
        Ok(out)
    }

    fn path_of(&self, digest: &Digest) -> String {
        self.paths
            .get(digest)
            .cloned()
            .unwrap_or_else(|| format!("blobs/sha256/{}", digest.hex()))
    }

    /// A manifest, index or config, verified against its digest.
    pub fn document(&self, digest: &Digest) -> Result<Vec<u8>, LocalError> {
        let data = match self.synthetic.get(digest) {
            Some(d) => d.clone(),
            None => self.files.read(&self.path_of(digest), self.max_document)?,
        };
        if Digest::of(&data) != *digest {
            return Err(LocalError::Corrupt {
                path: self.files.origin().to_owned(),
                digest: digest.clone(),
            });
        }
        Ok(data)
    }

    /// Copies a blob into `ingest` (which verifies it on commit).
    pub fn blob(&self, ingest: &mut Ingest) -> Result<(), LocalError> {
        let path = self.path_of(ingest.digest());
        let (mut r, _) = self.files.open(&path)?;
        ingest.reset()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf).map_err(|source| LocalError::Read {
                source_path: self.files.origin().to_owned(),
                file: path.clone(),
                source,
            })?;
            if n == 0 {
                return Ok(());
            }
            ingest.write(&buf[..n])?;
        }
    }

    /// `oci-layout:<path>` or `docker-archive:<path>`, for image records.
    pub fn origin(&self) -> String {
        match &self.files {
            Files::Dir(p) => format!("oci-layout:{}", p.display()),
            Files::Tar { path, .. } => format!("docker-archive:{}", path.display()),
        }
    }
}

fn hash_with_magic(r: &mut dyn Read) -> io::Result<(Digest, [u8; 4])> {
    let mut hasher = Hasher::default();
    let mut magic = [0u8; 4];
    let mut first = true;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher.finish(), magic));
        }
        if first {
            let k = n.min(4);
            magic[..k].copy_from_slice(&buf[..k]);
            first = false;
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn normalize_paths() {
        assert_eq!(super::normalize("./a/../b/c.tar"), "b/c.tar");
        assert_eq!(super::normalize("x/../../y"), "y");
    }
}
