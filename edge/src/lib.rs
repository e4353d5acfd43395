//! The sidecar's request path, from the accepted socket to the answer: [`serve`] decides which connections
//! are served and for how long, [`dispatch`] sends each request to the fast path or to the router.
//!
//! This crate knows nothing of secrets. The sidecar (`src/http.rs`) gives it an axum [`axum::Router`] for
//! every route and a [`FastPath`] that answers the one request an app makes over and over —
//! `GET /v1/secrets/NAME` — from memory, without the router's matching, extractors and boxed handlers.
//!
//! It is a crate of its own for its build profile (issue 11): the release profile compiles it for speed
//! and the rest of the sidecar for size. Its functions are not generic over the sidecar's types, so hyper's
//! connection code is instantiated and optimised here.

pub mod dispatch;
pub mod serve;

pub use dispatch::{Body, FastPath, Routes};
pub use serve::{Limits, serve};
