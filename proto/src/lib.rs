//! Generated types and gRPC services of Ferry's `ferry.v1` API.
//!
//! The `.proto` files under `proto/ferry/v1/` are the contract; this crate only owns code generation
//! (`build.rs`, via `protox`, so no `protoc` is required) so that every other crate shares one copy.
//!
//! # Layout
//! - [`v1`]: the generated messages, enums, clients and servers.
//! - [`json`]: how the admin API's answers serialize with serde (`ferry admin -o json`).
#![forbid(unsafe_code)]

pub mod json;

/// `ferry.v1`: events forwarding and the admin API.
pub mod v1 {
    tonic::include_proto!("ferry.v1");
}

/// The encoded `FileDescriptorSet` of every `ferry.v1` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ferry_v1_descriptor.bin"));
