//! The sidecar's request path, from the accepted socket to the answer: [`mod@serve`] decides which connections
//! are served and for how long, [`dispatch`] sends each request to the fast path or to the router.
//!
//! This crate knows nothing of secrets. The sidecar (`src/http.rs`) gives it an axum [`axum::Router`] for
//! every route and a [`FastPath`] that answers the one request an app makes over and over —
//! `GET /v1/secrets/NAME` — from memory, without the router's matching, extractors and boxed handlers.
//!
//! It is a crate of its own so that the compiler keeps the request path apart from the store
//! and the AWS SDK, and so that the release profile can set its opt-level apart from the rest of the
//! sidecar's: its functions are not generic over the sidecar's types, so hyper's connection code is
//! instantiated and compiled here (root `Cargo.toml`, beside the profile, says what that measured).

pub mod dispatch;
mod memory;
pub mod serve;

pub use dispatch::{Body, FastPath, Routes};
pub use serve::{Limits, serve};
