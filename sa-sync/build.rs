//! Generates the protocol types from proto/sync.proto (prost-build runs
//! protoc; set PROTOC if it is not on PATH).

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/sync.proto");
    let mut config = prost_build::Config::new();
    // Key-holding messages get a hand-written, redacting Debug and a
    // zeroizing Drop (src/pb.rs).
    config.skip_debug(["anyhub.sync.v1.DirectionKeys", "anyhub.sync.v1.IkeKeys"]);
    config.compile_protos(&["proto/sync.proto"], &["proto"])
}
