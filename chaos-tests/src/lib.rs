//! Fault-injection suite for Ferry. The scenarios (userspace fault proxy for latency, resets and
//! blackholes; `ip netns` regions; `kill -9` of workers) arrive with the event-driven daemon
//! (issue 3); this crate exists so the workspace layout is stable.
#![forbid(unsafe_code)]
