//! `controlplane.toml`. (Filled in with the server.)
