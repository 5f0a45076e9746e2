//! reemo-bundle command line: parses and dispatches only.
fn main() {}
