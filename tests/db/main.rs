//! The sidecar and the Ruby hook against real databases: private MariaDB and PostgreSQL servers
//! (`tests/harness/src/db.rs`, and the TLS + PAM ones that validate RDS IAM tokens in [`iam_server`]), real
//! Ruby on both stacks ([`load`]), the real binary and moto.
//!
//! One binary, apart from `tests/it`, because these tests each keep both cores busy for tens of seconds
//! (a Ruby process with 8 threads, a database, the sidecar): sharing `SERIAL`, they run one at a time, and
//! as a binary of their own they never overlap the timing-sensitive `it` tests either (cargo runs test
//! binaries one after another).
//!
//! - [`servers`]: the private servers authenticate for real, and count refused logins.
//! - [`rails_rotation`]: a Rails app survives rotations on both stacks; the failure budget; controls.
//! - [`rails_file_only`]: the hook with the credentials file alone, no endpoint.
//! - [`iam_servers`]: the IAM servers accept a token only over TLS and refuse every forgery.
//! - [`puma_restart`]: Puma in cluster mode (both stacks) gets a phased restart from an `--on-change`
//!   action after a rotation of a boot-time secret, with no failed request; one restart for a burst of three.
//! - [`rails_puma`]: both together — a Rails-style app under Puma (both stacks) keeps working across rotations
//!   of its database password (the hook) and of a boot-time secret (phased restart), with no failed request.
//! - [`iam_rails`]: a Rails app logs in with tokens the sidecar mints and renews.
//! - [`rails_gem`]: the gem built, installed into a scratch GEM_HOME and booted in a Rails app on both stacks.
//! - [`slow_sidecar`]: the failure budget holds with a sidecar that answers every request after 2.9 s.
//! - [`iam_tls`]: an IAM token never reaches a server whose certificate is for another name or from another
//!   CA, on both stacks and every adapter, counted on the servers.
//! - [`stale_logins`]: mysql2 `reconnect: true` and PostgreSQL 6.1's statement pool across the hook's
//!   reconnects, counted on the servers (refused logins, `pg_prepared_statements`).

mod iam_server;
mod load;
mod steps;

mod iam_rails;
mod iam_servers;
mod iam_tls;
mod puma_restart;
mod rails_file_only;
mod rails_gem;
mod rails_puma;
mod rails_rotation;
mod servers;
mod slow_sidecar;
mod stale_logins;

/// One busy end-to-end test at a time on a two-core machine.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
