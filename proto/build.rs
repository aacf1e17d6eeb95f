//! Compiles `ferry/v1/*.proto` with `protox` (pure Rust), so building Ferry never needs `protoc`,
//! and writes the file descriptor set that gRPC server reflection serves.
use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["ferry/v1/events.proto", "ferry/v1/admin.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ferry_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
