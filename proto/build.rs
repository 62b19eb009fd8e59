//! Compiles `proto/apiary.proto` with protox (pure Rust), so no system `protoc`
//! is needed to build apiary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = protox::compile(["proto/apiary.proto", "proto/tunnel.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(files)?;
    println!("cargo:rerun-if-changed=proto/apiary.proto");
    println!("cargo:rerun-if-changed=proto/tunnel.proto");
    Ok(())
}
