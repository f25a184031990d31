//! The file source: every `*.yaml` / `*.yml` under the configured paths, parsed into
//! the store, and re-read when files change.
//!
//! Changes are noticed through filesystem events (inotify) and, as a safety net for
//! editors and volumes that replace files in ways events miss, by a periodic scan
//! comparing modification time and size. Only files that changed are read again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use spar_model::Store;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// How often files are rescanned even without filesystem events.
const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// (modification time, size) of a file at its last read.
type Stamp = (SystemTime, u64);

/// Reads config paths into a store.
pub struct FileSource {
    paths: Vec<PathBuf>,
    // Hashed, not ordered: path comparisons were most of an idle rescan's cost.
    stamps: HashMap<PathBuf, Stamp>,
    store: Arc<Mutex<Store>>,
}

impl FileSource {
    /// A source for `paths` (directories or files) feeding `store`.
    pub fn new(paths: Vec<PathBuf>, store: Arc<Mutex<Store>>) -> Self {
        Self { paths, stamps: HashMap::new(), store }
    }

    /// Scans all paths, reads files that are new or changed and forgets removed ones.
    /// Returns whether the store changed.
    pub fn sync(&mut self) -> bool {
        let mut found = Vec::new();
        for p in &self.paths {
            collect(p, &mut found, true);
        }
        let mut changed = false;
        let present: std::collections::HashSet<&PathBuf> = found.iter().map(|(p, _)| p).collect();
        let removed: Vec<PathBuf> = self.stamps.keys().filter(|p| !present.contains(p)).cloned().collect();
        drop(present);
        for p in removed {
            self.stamps.remove(&p);
            let name = p.to_string_lossy();
            info!(file = %name, "config file removed");
            changed |= lock(&self.store).remove_unit(&name);
        }
        for (path, stamp) in found {
            if self.stamps.get(&path) == Some(&stamp) {
                continue;
            }
            self.stamps.insert(path.clone(), stamp);
            let name = path.to_string_lossy().to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    warn!(file = %name, error = %e, "cannot read config file; keeping what it had before");
                    continue;
                }
            };
            let parsed = crate::load::parse_and_validate(&name, &text);
            crate::load::report(&parsed);
            changed |= lock(&self.store).set_unit(&name, parsed);
        }
        changed
    }

    /// Keeps the store in step with the files until the receiver is dropped; sends a
    /// unit on `changes` after every change to the store.
    pub async fn run(mut self, changes: mpsc::Sender<()>) {
        let (ev_tx, mut ev_rx) = mpsc::channel::<()>(1);
        let mut watcher = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Only changes count: the scan's own reads raise access events, which would
            // otherwise start the next scan, and so on, a core busy doing nothing.
            if res.is_ok_and(|e| is_change(&e.kind)) {
                let _ = ev_tx.try_send(());
            }
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "filesystem events unavailable; falling back to periodic scans");
                None
            }
        };
        if let Some(w) = watcher.as_mut() {
            for p in &self.paths {
                if let Err(e) = w.watch(p, RecursiveMode::Recursive) {
                    warn!(path = %p.display(), error = %e, "cannot watch path; it is still scanned periodically");
                }
            }
        }
        let mut tick = tokio::time::interval(RESCAN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ev_rx.recv() => {}
                _ = tick.tick() => {}
                () = changes.closed() => return,
            }
            if self.sync() && changes.send(()).await.is_err() {
                return;
            }
        }
    }
}

fn lock(store: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    // A panic while holding the lock cannot leave the store half-written: every
    // mutation is a single map insert or remove.
    store.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether a filesystem event may mean a config file changed (created, written,
/// renamed, removed), as opposed to being read or having its access time updated.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{MetadataKind, ModifyKind};
    match kind {
        EventKind::Access(_) | EventKind::Other => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
    }
}

fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

fn collect(path: &Path, out: &mut Vec<(PathBuf, Stamp)>, top: bool) {
    let Ok(meta) = std::fs::metadata(path) else {
        if top {
            warn!(path = %path.display(), "config path does not exist (yet)");
        }
        return;
    };
    if meta.is_dir() {
        let Ok(rd) = std::fs::read_dir(path) else { return };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for e in entries {
            // Hidden files and directories are editors' and Kubernetes' scratch space
            // (`..data` symlinks of ConfigMap volumes resolve through the visible names).
            if e.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
                continue;
            }
            collect(&e, out, false);
        }
    } else if top || is_yaml(path) {
        let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
        out.push((path.to_path_buf(), stamp));
    }
}

#[cfg(test)]
mod tests {
    use notify::EventKind;
    use notify::event::{AccessKind, CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind, RenameMode};

    use super::is_change;

    #[test]
    fn reads_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Any)));
        assert!(!is_change(&EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
        assert!(is_change(&EventKind::Modify(ModifyKind::Data(DataChange::Any))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(is_change(&EventKind::Remove(RemoveKind::File)));
    }
}
