//! ws-relay-server: placeholder entry point, replaced by the relay implementation.
fn main() {
    println!("ws-relay-server");
}
