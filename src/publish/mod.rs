//! How figures become messages: service names from balena's container names (`balena`), hand-over updates
//! (`handover`), topics (`topics`), payloads (`payload`), a container's life as topics (`lifecycle`),
//! Home Assistant discovery (`discovery`), and a collection on its way to the session record by record
//! (`tick`), with its input problems summarised (`warnings`) and, when reporting by exception, only
//! the figures that moved (`exception`). Once Home Assistant has read a service's configs, its values
//! go out again (`resend`).

pub mod balena;
pub mod discovery;
pub mod exception;
pub mod handover;
pub mod lifecycle;
pub mod payload;
pub mod resend;
pub mod tick;
pub mod topics;
pub mod warnings;
