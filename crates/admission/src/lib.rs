//! Admission control: decides whether a service's reservation fits on the gateway and, when it
//! does not, says which resource is short, who holds it, and which services to stop to make room.
//!
//! A gateway has a capacity per [`Resource`], part of which is kept back for the system
//! ([`Gateway::system_reserve`]); a provider may also be capped at less than the whole gateway
//! ([`Gateway::provider_caps`]). [`admit`] checks a [`Request`] against both limits given the
//! services that hold reservations now ([`Holder`]s) and returns a [`Refusal`] naming every
//! shortage and, when one exists, the smallest set of lower-priority services whose stopping
//! makes the request fit.
//!
//! **Architecture Invariant:** this crate is pure logic. It does no I/O and keeps no state; the
//! caller passes the gateway and the current holders in on every call.
//!
//! All sums are taken in `u128` and every public arithmetic helper saturates, so no input,
//! however large (`u64::MAX` included), makes a decision overflow or panic.

mod admit;
mod amounts;
mod proposal;
mod refusal;

pub use admit::{admit, Gateway, Holder, Request};
pub use amounts::{Amounts, Resource};
pub use refusal::{Refusal, Scope, Shortage, WayOut};
