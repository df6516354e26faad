//! Reading a registered file's bytes back out, and the health of the parts that hold them.
//!
//! The API serves downloads (whole or ranged), the Jupyter channel sends figures inline, and
//! the CLI saves outputs to disk; all of them ask here rather than reaching into the catalog
//! or the blob store, so that where bytes live (a local folder today, object storage
//! tomorrow) is the supervisor's business alone.

use std::ops::Range;

use futures::stream::BoxStream;

use super::*;

/// The bytes of a file as a stream for a response body.
pub type ByteStream = BoxStream<'static, std::result::Result<bytes::Bytes, std::io::Error>>;

impl Supervisor {
    /// The live file `file_id` whoever owns it, for a signed link: the link's signature, which
    /// the caller checks against the record, is what proves the right to it.
    pub async fn file_for_link(&self, file_id: &FileId) -> Result<Option<FileRecord>> {
        Ok(self.catalog.files().get_live(file_id).await?)
    }

    /// The bytes of `file` (or the `range` of them) as a stream, read in large chunks.
    pub async fn file_bytes(
        &self,
        file: &FileRecord,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream> {
        Ok(self.blobs.read_stream(&file.blob_key, range).await?)
    }

    /// Copies every byte of `file` into `sink`, returning how many were copied.
    pub async fn copy_file_to(
        &self,
        file: &FileRecord,
        sink: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<u64> {
        Ok(self.blobs.copy_to(&file.blob_key, sink).await?)
    }

    /// Asks the catalog, the blob store and the container engine whether they answer, at
    /// once; each part is named with its failure, if any.
    pub async fn check_parts(&self) -> [(&'static str, Option<String>); 3] {
        let (catalog, blobs, runtime) =
            tokio::join!(self.catalog.ping(), self.blobs.ping(), self.runtime.ping());
        [
            ("catalog", catalog.err().map(|error| error.to_string())),
            ("blob store", blobs.err().map(|error| error.to_string())),
            (
                "container engine",
                runtime.err().map(|error| error.to_string()),
            ),
        ]
    }

    /// Checks that the engine can mount the workspaces folder into sandboxes (a service must
    /// find out at start, not at its first run).
    pub async fn check_host_folder(&self) -> Result<()> {
        Ok(self
            .runtime
            .check_host_folder(self.workspaces.root())
            .await?)
    }
}
