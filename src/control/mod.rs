//! The writers, off the request path: the snapshot state the request path reads once per
//! request, the reload task that rebuilds it, key material and the gateway listener's TLS.

pub mod ca;
mod compose;
pub mod reload;
mod seed;
pub mod shared_limit;
pub mod state;
pub mod tls;
pub mod token;
mod verify;
mod watch;
