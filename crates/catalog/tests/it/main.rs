//! Integration tests of the catalog: real tough, real files in temp directories, one attack per
//! module, each asserting the refusal a gateway would report.

mod admit;
mod common;
mod freeze;
mod mix_and_match;
mod rollback;
mod tamper;
