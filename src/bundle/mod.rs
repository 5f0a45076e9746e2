//! The bundle file: manifest format, writer (build side) and verifying reader (host side).

pub mod layers;
pub mod manifest;
pub mod reader;
pub mod tarfmt;
pub mod version;
pub mod writer;

#[cfg(test)]
mod tests;
