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

/// Largest config file read: 32 MiB. A Kubernetes object is at most about 1.5 MiB (etcd's
/// limit); a file larger than this is a mistake, and reading it would cost ten times its
/// size in memory. It is refused before it is read, and what it held before is kept.
pub const MAX_FILE_BYTES: u64 = 32 << 20;

/// Reads config paths into a store.
pub struct FileSource {
    paths: Vec<PathBuf>,
    // Hashed, not ordered: path comparisons were most of an idle rescan's cost.
    stamps: HashMap<PathBuf, Stamp>,
    store: Arc<Mutex<Store>>,
    /// Directories reached a second time (symlink loops), each reported once.
    loops: std::collections::HashSet<PathBuf>,
}

impl FileSource {
    /// A source for `paths` (directories or files) feeding `store`.
    pub fn new(paths: Vec<PathBuf>, store: Arc<Mutex<Store>>) -> Self {
        Self { paths, stamps: HashMap::new(), store, loops: std::collections::HashSet::new() }
    }

    /// Scans all paths, reads files that are new or changed and forgets removed ones.
    /// Returns whether the store changed.
    pub fn sync(&mut self) -> bool {
        let mut walk = Walk::default();
        for p in &self.paths {
            walk.collect(p, true);
        }
        for l in walk.loops {
            if self.loops.insert(l.clone()) {
                warn!(path = %l.display(), "directory reached again through a symbolic link (a loop); not read twice");
            }
        }
        let found = walk.found;
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
            if stamp.1 > MAX_FILE_BYTES {
                warn!(file = %name, bytes = stamp.1, limit = MAX_FILE_BYTES, "config file too large: not read (split it); what it held before is kept");
                continue;
            }
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

/// One scan of the config paths: the files found, and the directories reached twice.
#[derive(Default)]
struct Walk {
    found: Vec<(PathBuf, Stamp)>,
    /// Directories entered, by (device, inode): symbolic links may lead back to one.
    seen: std::collections::HashSet<(u64, u64)>,
    loops: Vec<PathBuf>,
}

impl Walk {
    fn collect(&mut self, path: &Path, top: bool) {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(path) else {
            if top {
                warn!(path = %path.display(), "config path does not exist (yet)");
            }
            return;
        };
        if meta.is_dir() {
            if !self.seen.insert((meta.dev(), meta.ino())) {
                self.loops.push(path.to_path_buf());
                return;
            }
            let Ok(rd) = std::fs::read_dir(path) else { return };
            let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            for e in entries {
                // Hidden files and directories are editors' and Kubernetes' scratch space
                // (`..data` symlinks of ConfigMap volumes resolve through the visible names).
                if e.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
                    continue;
                }
                self.collect(&e, false);
            }
        } else if top || is_yaml(path) {
            let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
            self.found.push((path.to_path_buf(), stamp));
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::EventKind;
    use notify::event::{AccessKind, CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind, RenameMode};

    use super::{FileSource, MAX_FILE_BYTES, is_change};
    use spar_model::Store;
    use std::sync::{Arc, Mutex};

    const SERVICE: &str =
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{name: http, port: 80}]}\n";

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("spar-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    fn units(store: &Arc<Mutex<Store>>) -> usize {
        store.lock().expect("store").objects().0.len()
    }

    #[test]
    fn symlink_loops_are_walked_once_and_their_files_read() {
        let d = scratch("loops");
        std::fs::create_dir_all(d.join("a/b")).expect("dirs");
        std::fs::write(d.join("a/b/svc.yaml"), SERVICE).expect("write");
        std::os::unix::fs::symlink(&d, d.join("a/b/up")).expect("loop 1");
        std::os::unix::fs::symlink(d.join("a"), d.join("a/b/again")).expect("loop 2");
        let store = Arc::new(Mutex::new(Store::new()));
        let mut source = FileSource::new(vec![d.clone()], Arc::clone(&store));
        assert!(source.sync(), "the file is read");
        assert_eq!(units(&store), 1, "once, however many ways lead to it");
        assert_eq!(source.loops.len(), 2, "{:?}", source.loops);
        assert!(!source.sync(), "a rescan finds nothing new and ends");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_that_is_not_utf8_is_refused_and_what_it_held_is_kept() {
        let d = scratch("utf8");
        let f = d.join("svc.yaml");
        std::fs::write(&f, SERVICE).expect("write");
        let store = Arc::new(Mutex::new(Store::new()));
        let mut source = FileSource::new(vec![d.clone()], Arc::clone(&store));
        source.sync();
        let mut bad = SERVICE.as_bytes().to_vec();
        bad.extend_from_slice(&[0xff, 0xfe, b'\n']);
        std::fs::write(&f, bad).expect("write");
        assert!(!source.sync(), "nothing changed in the store");
        assert_eq!(units(&store), 1, "the service it held before is still served");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_over_the_limit_is_not_read_and_what_it_held_is_kept() {
        let d = scratch("large");
        let f = d.join("svc.yaml");
        std::fs::write(&f, SERVICE).expect("write");
        let store = Arc::new(Mutex::new(Store::new()));
        let mut source = FileSource::new(vec![d.clone()], Arc::clone(&store));
        source.sync();
        assert_eq!(units(&store), 1);
        // Sparse: the size is what counts, and it is checked before any byte is read.
        let file = std::fs::OpenOptions::new().write(true).open(&f).expect("open");
        file.set_len(MAX_FILE_BYTES + 1).expect("grow");
        assert!(!source.sync(), "nothing changed in the store");
        assert_eq!(units(&store), 1, "the service it held before is still served");
        let _ = std::fs::remove_dir_all(&d);
    }

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
