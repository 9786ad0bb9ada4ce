//! The image service: pull, load, list, inspect, remove, prune, root filesystems. This is the
//! domain API the CLI (and later skiffd) drives.
//!
//! A pull or load runs one pipeline whatever the source: resolve the top document, choose the
//! platform's manifest from an index, store the config, download the layers concurrently
//! (bounded) while unpacking them in order as each arrives, check every layer's diff id against
//! the config, and register the record last. The whole pipeline holds the store lock shared, so
//! `prune` waits for it rather than collecting content it is about to reference.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::config::ImagesConfig;
use crate::digest::Digest;
use crate::local::{LocalError, LocalSource};
use crate::platform::{self, Platform};
use crate::progress::{Event, Progress};
use crate::reference::{canonical_name, parse_reference, repository_name};
use crate::registry::{RegistryError, RegistrySource};
use crate::store::{
    ImageRecord, Ingest, IngestStart, LayerRecord, PrunePolicy, PruneReport, RootfsMount, Store,
    StoreError, now_secs,
};
use crate::unpack::{Compression, UnpackError, unpack_layer};

/// When to contact the registry, as the ECS agent's `ECS_IMAGE_PULL_BEHAVIOR` defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Pull; if that fails and the image is cached, use the cache.
    #[default]
    Default,
    /// Pull; a failure is an error.
    Always,
    /// Pull only when the image is not in the store.
    Once,
    /// Use the store when it has the image, else pull; exempt from automatic cleanup.
    PreferCached,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" => Ok(Self::Default),
            "always" => Ok(Self::Always),
            "once" => Ok(Self::Once),
            "prefer-cached" => Ok(Self::PreferCached),
            other => Err(format!(
                "unknown pull policy {other:?}: expected default, always, once or prefer-cached"
            )),
        }
    }
}

/// Errors of pulls, loads and lookups.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}: {message}")]
    Reference {
        /// What was given.
        reference: String,
        /// Why it is invalid.
        message: String,
    },
    /// Registry access failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// An air-gapped source failed.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No manifest for the wanted platform.
    #[error(
        "{name}: no image for platform {want}; the image has: {}",
        list(available)
    )]
    NoPlatform {
        /// The image.
        name: String,
        /// The platform asked for.
        want: Platform,
        /// What the image offers.
        available: Vec<Platform>,
    },
    /// A document is not a manifest or index we support.
    #[error("{name}: unsupported {what} {digest}: {message}")]
    Unsupported {
        /// The image.
        name: String,
        /// "manifest", "layer", ...
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// Why.
        message: String,
    },
    /// A document is malformed.
    #[error("{name}: invalid {what} {digest}: {message}")]
    Invalid {
        /// The image.
        name: String,
        /// "manifest", "config", ...
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// Why.
        message: String,
    },
    /// A layer could not be unpacked.
    #[error("{name}: layer {digest}")]
    Layer {
        /// The image.
        name: String,
        /// The layer blob.
        digest: Digest,
        /// Why.
        #[source]
        source: UnpackError,
    },
    /// A layer's content is not what the config says.
    #[error(
        "{name}: layer {digest} unpacks to diff id {actual}, but the image config says {expected}"
    )]
    DiffId {
        /// The image.
        name: String,
        /// The layer blob.
        digest: Digest,
        /// From the config.
        expected: Digest,
        /// Computed.
        actual: Digest,
    },
    /// The policy forbids pulling and the image is not stored.
    #[error("image {name} is not in the store")]
    NotFound {
        /// The name.
        name: String,
    },
    /// A background task died.
    #[error("internal task failed: {0}")]
    Join(String),
}

fn list(ps: &[Platform]) -> String {
    if ps.is_empty() {
        return "no platform entries".into();
    }
    ps.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Options of a pull or load.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Platform wanted (default: the configured one, else the host's).
    pub platform: Option<Platform>,
    /// When to contact the registry.
    pub policy: PullPolicy,
    /// Where events go.
    pub progress: Option<Progress>,
}

/// Where the pipeline takes documents and blobs from.
enum Source {
    Registry(RegistrySource),
    Local(LocalSource),
}

impl Source {
    async fn document(&self, digest: &Digest, progress: &Progress) -> Result<Vec<u8>, ImageError> {
        match self {
            Self::Registry(r) => Ok(r.manifest(Some(digest), progress).await?.0.to_vec()),
            Self::Local(l) => Ok(l.document(digest)?),
        }
    }

    async fn blob(
        &self,
        ingest: &mut Ingest,
        media_type: &str,
        progress: &Progress,
    ) -> Result<(), ImageError> {
        match self {
            Self::Registry(r) => Ok(r.blob(ingest, media_type, progress).await?),
            Self::Local(l) => Ok(l.blob(ingest)?),
        }
    }
}

/// The image service over one store.
#[derive(Clone, Debug)]
pub struct Images {
    store: Store,
    config: Arc<ImagesConfig>,
}

/// What the top of an image is.
#[derive(Deserialize)]
struct Versioned {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

impl Images {
    /// An image service over `store` configured by `config`.
    pub fn new(store: Store, config: ImagesConfig) -> Self {
        Self {
            store,
            config: Arc::new(config),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn platform(&self, opts: &PullOptions) -> Platform {
        opts.platform
            .clone()
            .or_else(|| self.config.platform.clone())
            .unwrap_or_else(Platform::host)
    }

    /// Pulls `reference` from its registry as `opts.policy` says.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
    ) -> Result<ImageRecord, ImageError> {
        let r = parse_reference(reference).map_err(|e| ImageError::Reference {
            reference: reference.to_owned(),
            message: e.to_string(),
        })?;
        let name = canonical_name(&r);
        let cached = || -> Result<Option<ImageRecord>, ImageError> {
            Ok(self
                .find(reference)
                .ok()
                .filter(|rec| rec.chain_ids().all(|c| self.store.has_snapshot(c))))
        };
        if matches!(opts.policy, PullPolicy::Once | PullPolicy::PreferCached)
            && let Some(rec) = cached()?
        {
            return Ok(rec);
        }
        let progress = opts.progress.clone().unwrap_or_else(Progress::none);
        let result = async {
            let source = RegistrySource::new(&self.config, &r)?;
            let _lock = self.lock_shared().await?;
            let (top, digest) = source.manifest(None, &progress).await?;
            let source = Arc::new(Source::Registry(source));
            self.import(
                &source,
                &name,
                &repository_name(&r),
                top.to_vec(),
                digest,
                opts,
                "registry".into(),
            )
            .await
        }
        .await;
        match (result, opts.policy) {
            (Err(e), PullPolicy::Default) => match cached()? {
                Some(rec) => {
                    tracing::warn!(image = %name, error = %format!("{e:#}"), "pull failed; using the cached image");
                    Ok(rec)
                }
                None => Err(e),
            },
            (r, _) => r,
        }
    }

    /// Loads every image of an OCI layout directory or `docker save` tarball.
    pub async fn load(
        &self,
        path: &Path,
        name: Option<&str>,
        opts: &PullOptions,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let (path, name, max) = (
            path.to_owned(),
            name.map(str::to_owned),
            self.config.limits.max_document_bytes,
        );
        let (source, images) =
            tokio::task::spawn_blocking(move || LocalSource::open(&path, name.as_deref(), max))
                .await
                .map_err(|e| ImageError::Join(e.to_string()))??;
        let origin = source.origin();
        let source = Arc::new(Source::Local(source));
        let _lock = self.lock_shared().await?;
        let progress = opts.progress.clone().unwrap_or_else(Progress::none);
        let mut out = Vec::new();
        for img in images {
            let top = source.document(&img.digest, &progress).await?;
            let repo = parse_reference(&img.name)
                .map(|r| repository_name(&r))
                .unwrap_or_else(|_| img.name.clone());
            out.push(
                self.import(
                    &source,
                    &img.name,
                    &repo,
                    top,
                    img.digest,
                    opts,
                    origin.clone(),
                )
                .await?,
            );
        }
        Ok(out)
    }

    async fn lock_shared(&self) -> Result<crate::store::StoreLock, ImageError> {
        let store = self.store.clone();
        blocking(move || store.lock(false)).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn import(
        &self,
        source: &Arc<Source>,
        name: &str,
        repository: &str,
        top: Vec<u8>,
        top_digest: Digest,
        opts: &PullOptions,
        origin: String,
    ) -> Result<ImageRecord, ImageError> {
        let progress = opts.progress.clone().unwrap_or_else(Progress::none);
        let want = self.platform(opts);
        let invalid = |what, digest: &Digest, message: String| ImageError::Invalid {
            name: name.to_owned(),
            what,
            digest: digest.clone(),
            message,
        };
        let unsupported = |what, digest: &Digest, message: String| ImageError::Unsupported {
            name: name.to_owned(),
            what,
            digest: digest.clone(),
            message,
        };

        // 1. The platform's manifest.
        let kind: Versioned = serde_json::from_slice(&top)
            .map_err(|e| invalid("manifest", &top_digest, e.to_string()))?;
        if kind.schema_version != Some(2) {
            return Err(unsupported(
                "manifest",
                &top_digest,
                format!(
                    "schema version {:?} (only 2 is supported; schema 1 is deprecated)",
                    kind.schema_version
                ),
            ));
        }
        let is_index = match kind.media_type.as_deref() {
            Some("application/vnd.oci.image.index.v1+json")
            | Some("application/vnd.docker.distribution.manifest.list.v2+json") => true,
            Some("application/vnd.oci.image.manifest.v1+json")
            | Some("application/vnd.docker.distribution.manifest.v2+json") => false,
            None => kind.manifests.is_some(),
            Some(other) => {
                return Err(unsupported(
                    "manifest",
                    &top_digest,
                    format!("media type {other}"),
                ));
            }
        };
        let (index_digest, index_bytes, manifest_digest, manifest_bytes) = if is_index {
            let index: ImageIndex = serde_json::from_slice(&top)
                .map_err(|e| invalid("index", &top_digest, e.to_string()))?;
            let chosen = platform::select(index.manifests(), &want).map_err(|available| {
                ImageError::NoPlatform {
                    name: name.to_owned(),
                    want: want.clone(),
                    available,
                }
            })?;
            let digest = parse_digest(chosen, name)?;
            let bytes = source.document(&digest, &progress).await?;
            (Some(top_digest), Some(top), digest, bytes)
        } else {
            (None, None, top_digest, top)
        };
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| invalid("manifest", &manifest_digest, e.to_string()))?;
        let media_type = manifest
            .media_type()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());

        // 2. The config, and what it says of the layers.
        let config_desc = manifest.config();
        let config_digest = parse_digest(config_desc, name)?;
        self.fetch(
            source,
            &config_digest,
            config_desc.size(),
            config_desc.media_type().as_ref(),
            &progress,
        )
        .await?;
        let config_bytes = self.store.read_blob(&config_digest)?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid("config", &config_digest, e.to_string()))?;
        let have = Platform::new(
            &config.os().to_string(),
            &config.architecture().to_string(),
            config.variant().as_deref(),
        );
        if have.os != want.os || have.architecture != want.architecture {
            return Err(ImageError::NoPlatform {
                name: name.to_owned(),
                want,
                available: vec![have],
            });
        }
        let diff_ids: Vec<Digest> = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| {
                d.parse().map_err(|e: crate::digest::DigestError| {
                    invalid("config", &config_digest, e.to_string())
                })
            })
            .collect::<Result<_, _>>()?;
        let layers = manifest.layers();
        if diff_ids.len() != layers.len() {
            return Err(invalid(
                "config",
                &config_digest,
                format!("{} diff ids for {} layers", diff_ids.len(), layers.len()),
            ));
        }
        let chain_ids = Digest::chain_ids(&diff_ids);
        let mut layer_info = Vec::with_capacity(layers.len());
        for l in layers {
            let digest = parse_digest(l, name)?;
            let mt = l.media_type().to_string();
            let compression = compression_of(&mt)
                .ok_or_else(|| unsupported("layer", &digest, format!("media type {mt}")))?;
            layer_info.push((digest, l.size(), mt, compression));
        }
        progress.emit(Event::Resolved {
            name: name.to_owned(),
            digest: manifest_digest.clone(),
            platform: have.clone(),
            layers: layer_info
                .iter()
                .map(|(d, s, _, _)| (d.clone(), *s))
                .collect(),
        });

        // 3. Layers: downloads run ahead (bounded), unpacking follows in order.
        let semaphore = Arc::new(tokio::sync::Semaphore::new(
            self.config.concurrent_downloads.max(1),
        ));
        let mut downloads = AbortOnDrop(
            layer_info
                .iter()
                .zip(&chain_ids)
                .map(|((digest, size, mt, _), chain)| {
                    let needed = !(self.store.has_blob(digest) && self.store.has_snapshot(chain));
                    let sem = semaphore.clone();
                    let (size, mt) = (*size, mt.clone());
                    let digest = digest.clone();
                    let progress = progress.clone();
                    let (this, source) = (self.clone(), source.clone());
                    tokio::spawn(async move {
                        if !needed {
                            progress.emit(Event::LayerCached {
                                digest: digest.clone(),
                            });
                            return Ok(());
                        }
                        let _permit = sem
                            .acquire()
                            .await
                            .map_err(|e| ImageError::Join(e.to_string()))?;
                        this.fetch(&source, &digest, size, &mt, &progress).await
                    })
                })
                .collect(),
        );
        let mut budget = self.config.limits.max_image_bytes;
        let mut unpacked_bytes = 0u64;
        let mut records = Vec::with_capacity(layer_info.len());
        for i in 0..layer_info.len() {
            (&mut downloads.0[i])
                .await
                .map_err(|e| ImageError::Join(e.to_string()))??;
            let (digest, size, mt, compression) = layer_info[i].clone();
            let chain = chain_ids[i].clone();
            let lowers: Vec<PathBuf> = chain_ids[..i]
                .iter()
                .rev()
                .map(|c| self.store.snapshot_fs(c))
                .collect();
            let store = self.store.clone();
            let limits = self.config.limits.clone();
            let (layer_name, layer_digest, expected) =
                (name.to_owned(), digest.clone(), diff_ids[i].clone());
            let (fresh, used) = blocking(move || {
                store.ensure_snapshot(&chain, |dir| {
                    let blob = store.open_blob(&layer_digest)?;
                    let mut left = budget;
                    let out = unpack_layer(blob, compression, dir, &lowers, &limits, &mut left)
                        .map_err(|source| ImageError::Layer {
                            name: layer_name.clone(),
                            digest: layer_digest.clone(),
                            source,
                        })?;
                    if out.diff_id != expected {
                        return Err(ImageError::DiffId {
                            name: layer_name.clone(),
                            digest: layer_digest.clone(),
                            expected: expected.clone(),
                            actual: out.diff_id,
                        });
                    }
                    Ok(out.bytes)
                })
            })
            .await?;
            // A snapshot built by an earlier pull counts against this image's limit too.
            if used > budget {
                return Err(ImageError::Layer {
                    name: name.to_owned(),
                    digest: digest.clone(),
                    source: UnpackError::TooLarge {
                        limit: self.config.limits.max_image_bytes,
                        entry: None,
                    },
                });
            }
            budget -= used;
            unpacked_bytes += used;
            progress.emit(Event::LayerUnpacked {
                digest: digest.clone(),
                fresh,
            });
            records.push(LayerRecord {
                digest,
                size,
                media_type: mt,
                diff_id: diff_ids[i].clone(),
                chain_id: chain_ids[i].clone(),
            });
        }

        // 4. Documents, then the record: from here the image exists.
        let store = self.store.clone();
        let record = ImageRecord {
            name: name.to_owned(),
            repository: repository.to_owned(),
            index_digest: index_digest.clone(),
            manifest_digest: manifest_digest.clone(),
            manifest_media_type: media_type,
            config_digest,
            platform: have,
            layers: records,
            unpacked_bytes,
            source: origin,
            pulled_at: now_secs(),
            last_used_at: None,
            keep: opts.policy == PullPolicy::PreferCached,
        };
        let rec = record.clone();
        blocking(move || {
            if let (Some(d), Some(b)) = (&index_digest, &index_bytes) {
                store.put_blob(b, Some(d))?;
            }
            store.put_blob(&manifest_bytes, Some(&manifest_digest))?;
            store.update_record(&rec.name.clone(), |previous| {
                Some(ImageRecord {
                    last_used_at: previous.as_ref().and_then(|p| p.last_used_at),
                    keep: rec.keep || previous.is_some_and(|p| p.keep),
                    ..rec
                })
            })
        })
        .await?;
        Ok(record)
    }

    /// Makes sure a blob is in the store, fetching it from `source` if needed.
    async fn fetch(
        &self,
        source: &Source,
        digest: &Digest,
        size: u64,
        media_type: &str,
        progress: &Progress,
    ) -> Result<(), ImageError> {
        let store = self.store.clone();
        let d = digest.clone();
        let start = blocking(move || store.begin_ingest(&d, size)).await?;
        let IngestStart::Write(mut ingest) = start else {
            return Ok(());
        };
        progress.emit(Event::LayerStarted {
            digest: digest.clone(),
            offset: ingest.offset(),
            size,
        });
        source.blob(&mut ingest, media_type, progress).await?;
        blocking(move || ingest.commit()).await?;
        progress.emit(Event::LayerDownloaded {
            digest: digest.clone(),
        });
        Ok(())
    }

    /// Finds a stored image by reference (`busybox`, `repo:tag`, `repo@sha256:...`).
    pub fn find(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let r = parse_reference(reference).map_err(|e| ImageError::Reference {
            reference: reference.to_owned(),
            message: e.to_string(),
        })?;
        let name = canonical_name(&r);
        if let Some(rec) = self.store.get_record(&name)? {
            return Ok(rec);
        }
        if let Some(d) = r.digest().and_then(|d| d.parse::<Digest>().ok()) {
            let repo = repository_name(&r);
            if let Some(rec) = self
                .store
                .list_records()?
                .into_iter()
                .find(|rec| rec.repository == repo && rec.has_digest(&d))
            {
                return Ok(rec);
            }
        }
        Err(ImageError::NotFound { name })
    }

    /// Every stored image.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self.store.list_records()?)
    }

    /// Removes an image and the content only it used.
    pub fn remove(&self, reference: &str) -> Result<PruneReport, ImageError> {
        let rec = self.find(reference)?;
        Ok(self.store.remove_image(&rec.name)?)
    }

    /// Prunes by `policy`, falling back to the configured cleanup rules.
    pub fn prune(&self, policy: &PrunePolicy) -> Result<PruneReport, ImageError> {
        let policy = PrunePolicy {
            keep_per_repository: policy
                .keep_per_repository
                .or(self.config.cleanup.keep_per_repository),
            unused_for: policy.unused_for.or(self.config.cleanup.unused_for),
            dry_run: policy.dry_run,
        };
        Ok(self.store.prune(&policy)?)
    }

    /// Mounts a container root filesystem `id` from a stored image.
    pub fn create_rootfs(&self, id: &str, reference: &str) -> Result<RootfsMount, ImageError> {
        let rec = self.find(reference)?;
        Ok(self.store.create_rootfs(id, &rec)?)
    }

    /// The parsed config of a stored image.
    pub fn config_of(&self, rec: &ImageRecord) -> Result<serde_json::Value, ImageError> {
        let bytes = self.store.read_blob(&rec.config_digest)?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid {
            name: rec.name.clone(),
            what: "config",
            digest: rec.config_digest.clone(),
            message: e.to_string(),
        })
    }
}

/// Aborts the download tasks still running when a pull fails half-way.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<Result<(), ImageError>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

fn parse_digest(d: &Descriptor, name: &str) -> Result<Digest, ImageError> {
    d.digest()
        .to_string()
        .parse()
        .map_err(|e: crate::digest::DigestError| ImageError::Unsupported {
            name: name.to_owned(),
            what: "descriptor",
            digest: Digest::of(b""),
            message: e.to_string(),
        })
}

/// The compression of a layer media type (OCI and Docker names), or None if not a layer we take.
pub fn compression_of(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

async fn blocking<T: Send + 'static, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ImageError>
where
    E: Into<ImageError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Join(e.to_string()))?
        .map_err(Into::into)
}
