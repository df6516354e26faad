//! Which workspaces are warm-pool slots: an empty file per slot in `<workspaces>/.pool/`, so
//! that this process and another on the same folder (or the next start) can tell a slot from
//! a message's workspace. The pool itself is `supervisor/pool.rs`.

use std::fs::{self, File};
use std::io;
use std::path::PathBuf;

use super::{POOL, Workspaces};
use crate::error::{IoContext, IoError};

impl Workspaces {
    /// Marks the workspace `id` as a warm-pool slot (see `supervisor/pool.rs`).
    pub fn mark_pool_slot(&self, id: &str) -> Result<(), IoError> {
        let marks = self.root.join(POOL);
        fs::create_dir_all(&marks).with_path("create", &marks)?;
        let mark = self.pool_mark(id)?;
        File::create(&mark).with_path("create", &mark)?;
        Ok(())
    }

    /// Removes the warm-pool mark of `id`, if it has one.
    pub fn unmark_pool_slot(&self, id: &str) -> Result<(), IoError> {
        let mark = self.pool_mark(id)?;
        match fs::remove_file(&mark) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.with_path("remove", &mark),
        }
    }

    /// Whether the workspace `id` is marked as a warm-pool slot (of this process or of
    /// another on the same folder).
    pub fn is_pool_slot(&self, id: &str) -> bool {
        self.pool_mark(id).is_ok_and(|mark| mark.exists())
    }

    /// Every workspace marked as a warm-pool slot.
    pub fn pool_slots(&self) -> Result<Vec<String>, IoError> {
        let marks = self.root.join(POOL);
        let entries = match fs::read_dir(&marks) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error).with_path("list", &marks),
        };
        let mut slots = Vec::new();
        for entry in entries {
            let entry = entry.with_path("list", &marks)?;
            if let Some(id) = entry.file_name().to_str() {
                slots.push(id.to_owned());
            }
        }
        Ok(slots)
    }

    fn pool_mark(&self, id: &str) -> Result<PathBuf, IoError> {
        // The same checks as a workspace's own path.
        self.get(id)?;
        Ok(self.root.join(POOL).join(id))
    }
}
