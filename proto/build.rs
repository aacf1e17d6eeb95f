//! Compiles `ferry/v1/*.proto` with `protox` (pure Rust), so building Ferry never needs `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["ferry/v1/events.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
