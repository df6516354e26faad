//! The HTTP and JSON face of codebox. Only this module knows HTTP and JSON shapes; the
//! supervisor below it deals in catalog records.

pub mod dto;
