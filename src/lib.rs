//! codebox: a code-execution sandbox supervisor.
//!
//! A chat backend hands codebox the code a model wrote for one chat message, with the files
//! the user attached. codebox runs it in a hardened Docker container whose working folder is
//! `/mnt/data`, registers the reports the code wrote there into durable storage, and serves
//! them for download. Start reading at [`supervisor`]: its `run` is the whole pipeline.

pub mod api;
pub mod blobs;
pub mod catalog;
pub mod config;
pub mod error;
pub mod extract;
pub mod ids;
pub mod runtime;
pub mod safe_fs;
pub mod server;
pub mod snapshot;
pub mod supervisor;
pub mod translate;
pub mod workspace;

pub use config::Config;
/// The sandbox image builder (`codebox image build`), which lives under `runtime/` with the
/// engine calls it makes.
pub use runtime::image_build as image;
pub use supervisor::{Error, Result, RunEvent, RunReport, RunRequest, Supervisor};
