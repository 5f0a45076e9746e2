//! The bundle file: manifest format, writer (build side) and verifying reader (host side).

pub mod manifest;
pub mod reader;
pub mod version;
pub mod writer;
