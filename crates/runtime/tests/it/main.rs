//! Integration tests of the runtime crate that need real mounts (root): read-only overlay roots.

mod overlay;
