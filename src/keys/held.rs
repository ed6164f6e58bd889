//! The ring a replica holds now, and the page token keys derived from it, swapped together: a
//! new primary (a rotation) or a newly learned data key changes both at once, so page tokens
//! are sealed under the current primary and open under every key the replica holds.

use std::sync::Arc;

use parking_lot::RwLock;

use crate::{domain::pagination::Paginator, vault::KeyRing};

/// Purpose label for the page-token HMAC key derived from each key of the ring.
const PAGE_TOKEN_KEY_PURPOSE: &str = "llm-registry page tokens v2";

pub(super) struct HeldKeys {
    ring: RwLock<(Arc<KeyRing>, Arc<Paginator>)>,
}

impl HeldKeys {
    pub(super) fn new(ring: KeyRing) -> Self {
        Self {
            ring: RwLock::new(with_paginator(ring)),
        }
    }

    pub(super) fn ring(&self) -> Arc<KeyRing> {
        Arc::clone(&self.ring.read().0)
    }

    pub(super) fn paginator(&self) -> Arc<Paginator> {
        Arc::clone(&self.ring.read().1)
    }

    /// Makes `ring` the one held (and publishes its key ids and roles).
    pub(super) fn install(&self, ring: KeyRing) {
        ring.publish_metrics();
        *self.ring.write() = with_paginator(ring);
    }
}

fn with_paginator(ring: KeyRing) -> (Arc<KeyRing>, Arc<Paginator>) {
    let paginator = Paginator::new(
        ring.primary().derive(PAGE_TOKEN_KEY_PURPOSE),
        ring.keys()
            .skip(1)
            .map(|key| key.derive(PAGE_TOKEN_KEY_PURPOSE))
            .collect(),
    );
    (Arc::new(ring), Arc::new(paginator))
}
