//! File-system safety: the only ways codebox turns a name from outside into a path, reads a
//! file the sandbox wrote, and walks a folder the sandbox controls.
//!
//! - [`join_safely`]: a name from a caller, the sandbox or an object key becomes a path below
//!   a folder, or an error; never `..`, never absolute.
//! - [`open_beneath`]: a file the sandbox wrote is opened step by step with `O_NOFOLLOW`, so a
//!   link it planted is never followed out of its folder.
//! - [`create_beneath`]: a file is written into a folder the sandbox may have written into
//!   (a workspace rebuilt from the catalog) without following a link it planted there.
//! - [`walk`]: a folder the sandbox controls is walked by file descriptors, without following
//!   a link, not even a folder swapped for one during the walk.
//!
//! It is a leaf that depends on nothing else in codebox, so every part that touches the disk
//! (workspaces, snapshots, the disk cap, the blob store) may use it without depending on one
//! another.

mod create;
mod join;
mod open;
pub mod walk;

pub use create::create_beneath;
pub use join::join_safely;
pub use open::open_beneath;
