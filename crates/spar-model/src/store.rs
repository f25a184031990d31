//! The config store: every object the sources produced, grouped by where it came from.
//!
//! Sources replace whole units (a file, or a Kubernetes object) and the store keeps what
//! each unit contributed, its errors and the documents it ignored, so that a bad
//! document only ever removes itself.

use std::collections::{BTreeMap, btree_map::Entry};
use std::sync::Arc;

use spar_api::{DocError, Object, ObjectKey, Origin, Parsed};

/// What one source unit (a file) contributed.
#[derive(Debug, Default, Clone)]
pub struct Unit {
    /// Objects, valid and accepted.
    pub objects: Vec<Object>,
    /// Documents rejected, with the reason.
    pub errors: Vec<DocError>,
    /// Documents of kinds Spar does not serve.
    pub ignored: Vec<(Origin, String)>,
    /// `metadata.generation` of a Kubernetes object's unit.
    pub generation: Option<i64>,
}

/// Two objects with the same key; the first (by file and line) is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The object's key.
    pub key: ObjectKey,
    /// The definition in use.
    pub kept: Origin,
    /// The definition ignored.
    pub dropped: Origin,
}

/// All configuration known to the control plane.
#[derive(Debug, Default, Clone)]
pub struct Store {
    units: BTreeMap<Arc<str>, Unit>,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces what `unit` contributed. Returns whether anything changed.
    ///
    /// Objects are kept typed only: their document as written ([`Object::raw`]) was needed
    /// to parse, validate and report them, which the sources did before this, and it
    /// cost about as much memory again as everything else a service holds.
    pub fn set_unit(&mut self, unit: &str, mut parsed: Parsed) -> bool {
        for o in &mut parsed.objects {
            o.raw = serde_json::Value::Null;
        }
        let new = Unit {
            objects: parsed.objects,
            errors: parsed.errors,
            ignored: parsed.ignored,
            generation: parsed.generation,
        };
        match self.units.entry(Arc::from(unit)) {
            Entry::Occupied(mut e) => {
                let old = e.get();
                let same = old.errors == new.errors
                    && old.generation == new.generation
                    && old.objects.len() == new.objects.len()
                    && old
                        .objects
                        .iter()
                        .zip(&new.objects)
                        .all(|(a, b)| a.meta == b.meta && a.origin == b.origin && a.resource == b.resource);
                if same {
                    return false;
                }
                e.insert(new);
                true
            }
            Entry::Vacant(e) => {
                e.insert(new);
                true
            }
        }
    }

    /// Forgets a unit (a deleted file). Returns whether it was known.
    pub fn remove_unit(&mut self, unit: &str) -> bool {
        self.units.remove(unit).is_some()
    }

    /// Units by name.
    pub fn units(&self) -> &BTreeMap<Arc<str>, Unit> {
        &self.units
    }

    /// Every accepted object, one per key (the first by unit and line), and the
    /// duplicates that were dropped.
    pub fn objects(&self) -> (Vec<&Object>, Vec<Duplicate>) {
        let mut seen: BTreeMap<ObjectKey, &Object> = BTreeMap::new();
        let mut dups = Vec::new();
        for obj in self.units.values().flat_map(|u| &u.objects) {
            match seen.entry(obj.key()) {
                Entry::Vacant(e) => {
                    e.insert(obj);
                }
                Entry::Occupied(e) => {
                    dups.push(Duplicate { key: obj.key(), kept: e.get().origin.clone(), dropped: obj.origin.clone() })
                }
            }
        }
        (seen.into_values().collect(), dups)
    }

    /// Every rejected document.
    pub fn errors(&self) -> impl Iterator<Item = &DocError> {
        self.units.values().flat_map(|u| &u.errors)
    }
}
