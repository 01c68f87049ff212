//! What the reload task watches: the directories of every file the config depends on, and
//! which filesystem events count as a change (kubelet's `..data` swaps and our own files, never
//! an open or a read).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The directories to watch for one file: its own, and the one its symlinks resolve to. A
/// Secret volume's `api-key` is a symlink into `..data/`, itself a symlink to the current
/// `..<timestamp>/` directory: a rewrite in place through the link (`echo new > api-key`, a
/// bind-mounted file edited on a laptop) only shows up as an event in that last directory.
pub(super) fn watch_dirs(file: &Path) -> Vec<PathBuf> {
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let resolved = std::fs::canonicalize(file)
        .ok()
        .and_then(|real| real.parent().map(Path::to_path_buf))
        .filter(|real| std::fs::canonicalize(&parent).ok().as_ref() != Some(real));
    std::iter::once(parent).chain(resolved).collect()
}

/// Whether a watcher event should trigger a re-read. Only changes count: notify also reports
/// opens and reads, and our own re-read opens every file it depends on, so counting those
/// turned each pass into the next one's trigger (a re-read every `debounce`, forever). And
/// only events about our files, or about kubelet's `..data` / `..<timestamp>` entries: a log
/// file written into the same directory must not turn every log line into a reload (and
/// every reload's log line into an event).
pub(super) fn counts(event: &notify::Event, names: &[OsString]) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    let change = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    change
        && event
            .paths
            .iter()
            .filter_map(|p| p.file_name())
            .any(|n| n.as_encoded_bytes().starts_with(b"..") || names.iter().any(|w| w == n))
}
