//! Walking a user's folder of LoRAs or embeddings as A1111 does: files in
//! subfolders count, named by their stem. Symlinked folders are not followed
//! (a link back up would loop), and the walk is bounded.

use std::path::{Path, PathBuf};

/// How deep and how wide a walk goes: far beyond real folders, short of what
/// a hostile or broken mount could make it cost.
const MAX_DEPTH: usize = 16;
const MAX_ENTRIES: usize = 100_000;

/// Every file under `dir` (subfolders too) whose extension is one of
/// `extensions` (ASCII case ignored), as (stem, path), sorted by stem then path.
pub fn files_by_stem(dir: &Path, extensions: &[&str]) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), 0usize)];
    let mut seen = 0usize;
    while let Some((dir, depth)) = pending.pop() {
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in read.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                break;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                if depth < MAX_DEPTH {
                    pending.push((path, depth + 1));
                }
                continue;
            }
            let wanted = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)));
            // A file, or a link to one (a linked folder is not walked).
            if wanted && path.is_file() {
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    found.push((stem.to_string(), path));
                }
            }
        }
    }
    found.sort();
    found
}
