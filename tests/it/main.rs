//! The sidecar through its real binary, against moto's Secrets Manager or a dev file: one integration
//! test binary over the shared harness (`tests/harness`: the emulator, the sidecar process, log helpers),
//! linked once.
//!
//! - [`cli`]: the command line as an operator meets it, and start-up failures.
//! - [`credentials`]: task-role credentials from the container credentials endpoint, expiring every few
//!   seconds, behind a proxy that refuses expired keys as AWS does.
//! - [`daemon`]: what a task sees from start to SIGTERM.
//! - [`dev_secrets`]: `--dev-secrets`, local development without AWS.
//! - [`env_format`]: `format=env` files read back by sh, Ruby's and Python's dotenv; rotations, rejections.
//! - [`failover`]: `--failover-region`: ready from the replica while the primary Region fails, a rotation
//!   through it, the return, and no failover on a denial or a deletion.
//! - [`forced_refresh`]: `POST /v1/secrets/NAME/refresh` when the client does not wait for the answer.
//! - [`http_edge`]: the listener under a storm of slow clients.
//! - [`template_format`]: `--template` files through rotations, render and start-up errors; `urlencode`
//!   read back by Python's and Ruby's URL parsers.
//! - [`on_change`]: `--on-change` actions: an HTTP request after the file is in place, signals, debounce.
//! - [`rds_iam`]: `rds-iam://` entries: the token file, forced re-signing, health, no credentials.
//! - [`iam_token`]: the crate's RDS IAM tokens against botocore's, the reference signer.
//!
//! The tests with real databases and Ruby are the other binary, `tests/db`.

mod cli;
mod credentials;
mod daemon;
mod dev_secrets;
mod env_format;
mod failover;
mod forced_refresh;
mod http_edge;
mod iam_token;
mod on_change;
mod rds_iam;
mod template_format;
