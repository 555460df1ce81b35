//! Our MQTT 3.1.1 client: `frame` checks what comes in, `message` encodes the PUBLISHes that go out and
//! `control` the other packets, `outbox` holds what waits to go and what awaits its PUBACK, `session` is
//! the protocol; none of them does I/O. `link` (with `connect` and `transport`) is the socket side, which
//! the loop in `agent.rs` owns and drives.

pub mod backoff;
pub mod connect;
pub mod control;
pub mod failover;
pub mod frame;
pub mod kicked;
pub mod link;
pub mod message;
pub mod outbox;
pub mod reconnect;
pub mod resolve;
pub mod session;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transport;
#[cfg(feature = "tls")]
pub mod x509;

pub use message::Message;
pub use session::{Event, Options, Session, Will};
