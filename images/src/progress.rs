//! Progress of pulls and loads, as events, so that the CLI can draw bars on a terminal and
//! print plain lines elsewhere, and skiffd can forward them, without the library knowing how.

use std::sync::Arc;
use std::time::Duration;

use crate::digest::Digest;
use crate::platform::Platform;

/// Something that happened during a pull or load.
#[derive(Clone, Debug)]
pub enum Event {
    /// The image was resolved to a manifest.
    Resolved {
        /// Canonical name.
        name: String,
        /// The platform manifest's digest.
        digest: Digest,
        /// Its platform.
        platform: Platform,
        /// (digest, size) of each layer.
        layers: Vec<(Digest, u64)>,
    },
    /// A layer's blob was already in the store.
    LayerCached {
        /// The layer.
        digest: Digest,
    },
    /// A download started (or resumed at `offset`).
    LayerStarted {
        /// The layer.
        digest: Digest,
        /// Resumed from this byte.
        offset: u64,
        /// Its size.
        size: u64,
    },
    /// Bytes arrived.
    LayerProgress {
        /// The layer.
        digest: Digest,
        /// Bytes so far.
        done: u64,
        /// Its size.
        total: u64,
    },
    /// The blob is stored and verified.
    LayerDownloaded {
        /// The layer.
        digest: Digest,
    },
    /// The layer is unpacked (or its snapshot existed).
    LayerUnpacked {
        /// The layer.
        digest: Digest,
        /// Whether it was unpacked now.
        fresh: bool,
    },
    /// A request failed and will be retried.
    Retrying {
        /// What was fetched.
        what: String,
        /// From where.
        host: String,
        /// Attempt number that failed.
        attempt: u32,
        /// Why.
        error: String,
        /// Pause before the next attempt.
        delay: Duration,
    },
}

/// A sink for events; cheap to clone.
#[derive(Clone)]
pub struct Progress(Option<Arc<dyn Fn(Event) + Send + Sync>>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

impl Progress {
    /// Events go nowhere.
    pub fn none() -> Self {
        Self(None)
    }

    /// Events go to `f`.
    pub fn new(f: impl Fn(Event) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    /// Reports one event.
    pub fn emit(&self, event: Event) {
        if let Some(f) = &self.0 {
            f(event);
        }
    }
}
