//! Content the service refused for good: kept, never dropped.
//!
//! The uploader drops a journal entry the service refuses with an error of its own (a
//! retry would block every later change), and the view then shows what the service has.
//! A user's bytes must not go with it: before the entry is dropped, its content file is
//! copied to `<cache>/refused/` under the path the file had in the drive, with the time of
//! the refusal in its name (`notes (refused 2026-12-02 101500).txt`, as conflict copies
//! are named), so `jewelfs status`, the WARN line in the log and the README all point the
//! user at one folder. Nothing is ever deleted from it by the client.
//!
//! Path of a node: walked up the tree cache from the node to the top folder; a part that
//! is not known any more (the folder was removed meanwhile) is named by its id.

use std::path::PathBuf;

use jewel_wire::{NodeId, ROOT_ID};

use super::conflict::{format_utc, split_ext};
use super::journal::{Entry, LocalKind, Op};
use super::Core;

impl Core {
    /// The folder where refused content is kept.
    pub fn refused_dir(&self) -> PathBuf {
        self.cfg.cache_dir.join("refused")
    }

    /// The node's path in the drive as this device sees it (`a/b/c.txt`).
    pub(crate) fn path_of(&self, id: NodeId) -> String {
        let mut parts = Vec::new();
        let mut id = self.resolve(id);
        for _ in 0..256 {
            if id == ROOT_ID {
                break;
            }
            match self.tree.get(id) {
                Some(n) => {
                    parts.push(n.name.clone());
                    id = n.parent;
                }
                None => {
                    parts.push(format!("node {id}"));
                    break;
                }
            }
        }
        parts.reverse();
        parts.join("/")
    }

    /// Copies the content of a refused entry (if it carries any) into the refused folder;
    /// returns where it is kept.
    pub(crate) fn keep_refused(&self, entry: &Entry) -> Option<PathBuf> {
        let data = match &entry.op {
            Op::Create {
                kind: LocalKind::File { data, .. },
                ..
            } => data.as_deref(),
            Op::Content { data, .. } => data.as_deref(),
            _ => None,
        }?;
        let path = self.path_of(entry.op.node());
        let dest = self
            .refused_dir()
            .join(refused_name(&path, &format_utc(super::now_ns())));
        let kept = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(dest.parent().unwrap_or(&self.refused_dir()))?;
            std::fs::copy(self.journal.data_path(data), &dest)?;
            Ok(())
        })();
        match kept {
            Ok(()) => Some(dest),
            Err(e) => {
                tracing::error!(
                    "could not keep refused content of {path} in {}: {e}",
                    dest.display()
                );
                None
            }
        }
    }
}

/// `dir/name.ext` → `dir/name (refused STAMP).ext`; parts that could climb out (`..`,
/// empty) are replaced, so the copy always lands inside the refused folder.
fn refused_name(path: &str, stamp: &str) -> PathBuf {
    let mut parts: Vec<String> = path
        .split('/')
        .map(|p| match p {
            "" | "." | ".." => "_".to_string(),
            p => p.to_string(),
        })
        .collect();
    let last = parts.pop().unwrap_or_else(|| "_".into());
    let (stem, ext) = split_ext(&last);
    parts.push(format!("{stem} (refused {stamp}){ext}"));
    parts.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_names_keep_the_extension_and_stay_inside() {
        assert_eq!(
            refused_name("a/notes.txt", "2026-12-02 101500"),
            PathBuf::from("a/notes (refused 2026-12-02 101500).txt")
        );
        assert_eq!(
            refused_name("../x/.bashrc", "S"),
            PathBuf::from("_/x/.bashrc (refused S)")
        );
    }
}
