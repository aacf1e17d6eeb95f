//! Generated types and gRPC services of Ferry's `ferry.v1` API.
//!
//! The `.proto` files under `proto/ferry/v1/` are the contract; this crate only owns code generation
//! (`build.rs`, via `protox`, so no `protoc` is required) so that every other crate shares one copy.
#![forbid(unsafe_code)]

/// `ferry.v1`: events forwarding and the admin API.
pub mod v1 {
    tonic::include_proto!("ferry.v1");
}

/// The encoded `FileDescriptorSet` of every `ferry.v1` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ferry_v1_descriptor.bin"));
