//! Integration tests: real sockets on 127.0.0.1:0, a real TLS upstream with a CA minted at
//! test time, the same `App::bind` as `main`.

// Support helpers are test code too: a failed set-up should panic loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod adversarial;
mod apis;
mod cli;
mod confidentiality;
mod connections;
mod desync;
mod faults;
mod forward;
mod gateway;
mod h2_faults;
mod h2_hpack;
mod least_privilege;
mod lifecycle;
mod local;
mod pooling;
mod proxy;
mod rotation;
mod schemes;
mod scrub;
mod shared_limits;
mod sigv4;
mod streaming;
mod tokens;
mod verify;
mod websocket;
