//! Compiles `proto/apiary.proto` with protox (pure Rust), so no system `protoc`
//! is needed to build apiary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = protox::compile(["proto/apiary.proto", "proto/tunnel.proto"], ["proto"])?;
    // Tunnel data as `Bytes`: decoding slices the received buffer instead of
    // copying each frame into a fresh Vec.
    tonic_prost_build::configure()
        .bytes(".apiary.tunnel.v1.Frame.data")
        .compile_fds(files)?;
    println!("cargo:rerun-if-changed=proto/apiary.proto");
    println!("cargo:rerun-if-changed=proto/tunnel.proto");
    Ok(())
}
