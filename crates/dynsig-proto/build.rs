//! Compiles `proto/dynsig/v1/*.proto` with protox (pure Rust), so a fresh machine
//! needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["dynsig/v1/input.proto", "dynsig/v1/signals.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
