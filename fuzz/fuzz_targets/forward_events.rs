//! A `ferry.v1.Events/Forward` request body from a peer region: protobuf decoding and the field
//! checks never panic.
#![no_main]
use ferry_proto::v1 as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|body: &[u8]| {
    if let Ok(request) = pb::ForwardRequest::decode(body) {
        for event in request.events {
            let _ = ferry_replicator::regions::from_proto(event);
        }
    }
});
