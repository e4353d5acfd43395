//! The Ruby side as a gem, the way a Rails user takes it: on each Ruby stack, `gem build` makes
//! `contrib/ruby/secrets_sidecar.gemspec` into a .gem, `gem install --local` puts it into a scratch
//! `GEM_HOME`, and `bin/rails runner` boots the minimal Rails app in `tests/rails_app` (Debian's Railties:
//! 6.1 and 7.2) against private MariaDB and PostgreSQL servers. The app requires the gem as `Bundler.require`
//! does for `gem "secrets_sidecar"`; its `database.yml` has the documented `secrets_sidecar:` block and no
//! password. Nothing edits the load path, and the copy of `contrib/ruby` the gem was built from is gone
//! before the app boots.
//!
//! Checked: the installed gem holds what the gemspec lists and is where the app loads it from; its Railtie
//! installed the hook (mysql2 and postgresql); both databases accepted a login whose password only the
//! credentials files hold, and refused none. One boot per stack.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

use crate::SERIAL;
use crate::load::{self, Stack, copy_tree, repo};
use harness::db::{self, MariaDb, Postgres};

/// The files the gem must ship (the gemspec's list, checked against the installed gem).
const GEM_FILES: [&str; 8] = [
    "README.md",
    "lib/secrets_sidecar.rb",
    "lib/secrets_sidecar/active_record.rb",
    "lib/secrets_sidecar/active_record/iam_tls.rb",
    "lib/secrets_sidecar/active_record/verify-server-cert.cnf",
    "lib/secrets_sidecar/railtie.rb",
    "lib/secrets_sidecar/version.rb",
    "secrets_sidecar.gemspec",
];

fn run(what: &str, mut cmd: std::process::Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A private server's port and the password of its `app` user.
struct Db {
    port: u16,
    password: String,
}

/// Builds, installs and boots on `stack` (with `config.secrets_sidecar.install_hook = install_hook`);
/// returns what `script/check.rb` printed (or the runner's failure), and the GEM_HOME as the stack sees it.
fn build_install_boot(stack: &Stack, mysql: &Db, pg: &Db, install_hook: bool) -> (Result<Value, String>, String) {
    let scratch = stack.scratch_dir("sidecar-gem-");
    let dir = scratch.path();
    let inner = |p: &Path| stack.inner_path(p).to_string_lossy().into_owned();

    // gem build, by the stack's own RubyGems, from a copy of contrib/ruby.
    copy_tree(&repo().join("contrib/ruby"), &dir.join("src"));
    let gem = dir.join("secrets_sidecar.gem");
    let mut build = stack.ruby();
    build.args(["-C", &inner(&dir.join("src")), "-S", "gem", "build", "secrets_sidecar.gemspec"]);
    build.args(["--output", &inner(&gem)]);
    run("gem build", build);
    std::fs::remove_dir_all(dir.join("src")).unwrap();

    // gem install into a GEM_HOME of its own.
    let gem_home = dir.join("gems");
    let mut install = stack.ruby();
    install.args([
        "-S",
        "gem",
        "install",
        "--local",
        "--no-document",
        "--install-dir",
        &inner(&gem_home),
        &inner(&gem),
    ]);
    run("gem install", install);

    // The app, and a credentials file per database, written as the sidecar publishes them.
    let app = dir.join("app");
    copy_tree(&repo().join("tests/rails_app"), &app);
    let (mysql_file, pg_file) = (dir.join("mysql.json"), dir.join("pg.json"));
    for (file, password) in [(&mysql_file, &mysql.password), (&pg_file, &pg.password)] {
        std::fs::write(file, json!({"username": db::APP_USER, "password": password}).to_string()).unwrap();
    }
    let mut boot = stack.ruby();
    boot.args(["-C", &inner(&app), "bin/rails", "runner", "script/check.rb"])
        .env_remove("RUBYLIB")
        .env_remove("RUBYOPT")
        .env_remove("GEM_PATH")
        .env("GEM_HOME", inner(&gem_home))
        .env("RAILS_ENV", "production")
        .env("GEM_CHECK_MYSQL_PORT", mysql.port.to_string())
        .env("GEM_CHECK_PG_PORT", pg.port.to_string())
        .env("GEM_CHECK_MYSQL_FILE", inner(&mysql_file))
        .env("GEM_CHECK_PG_FILE", inner(&pg_file))
        .env("GEM_CHECK_INSTALL_HOOK", install_hook.to_string());
    let out = boot.output().expect("bin/rails runner");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for pw in [&mysql.password, &pg.password] {
        assert!(
            !stdout.contains(pw.as_str()) && !stderr.contains(pw.as_str()),
            "a password leaked into the app's output"
        );
    }
    if !out.status.success() {
        return (Err(stderr.into_owned()), inner(&gem_home));
    }
    let line = stdout.lines().last().unwrap_or_default();
    let v = serde_json::from_str(line).unwrap_or_else(|e| panic!("check.rb printed {stdout:?} ({e})\n{stderr}"));
    (Ok(v), inner(&gem_home))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gem_builds_installs_and_boots_in_a_rails_app_on_both_stacks() {
    let _serial = SERIAL.lock().await;
    let m = tokio::task::spawn_blocking(MariaDb::start).await.unwrap();
    let p = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let mysql = Db { port: m.port(), password: db::random_password() };
    let pg = Db { port: p.port(), password: db::random_password() };
    m.set_password(db::APP_USER, &mysql.password);
    p.set_password(db::APP_USER, &pg.password);
    for stack in [Stack::Debian12, Stack::debian13()] {
        load::require_ruby("mysql2", &stack);
        load::require_ruby("postgresql", &stack);
        let (v, gem_home) = boot_on(&stack, &mysql, &pg, true).await;
        let v = v.unwrap_or_else(|stderr| panic!("the app did not boot and connect:\n{stderr}"));
        println!(
            "=== {}: Rails {} on Ruby {}, secrets_sidecar {} from {}: hooks {}, logged in as {} (MariaDB) and {} \
             (PostgreSQL)",
            stack.name(),
            v["rails"],
            v["ruby"],
            v["gem_version"],
            v["gem_dir"],
            v["hooks"],
            v["mysql2"],
            v["postgresql"]
        );
        let gem_dir = v["gem_dir"].as_str().unwrap();
        assert!(gem_dir.starts_with(&format!("{gem_home}/gems/secrets_sidecar-")), "{v:#}");
        let files: Vec<&str> = v["gem_files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        assert_eq!(files, GEM_FILES, "{v:#}");
        assert_eq!(v["load_path"], json!([format!("{gem_dir}/lib")]), "{v:#}");
        let loaded = v["loaded"].as_array().unwrap();
        assert!(!loaded.is_empty() && loaded.iter().all(|f| f.as_str().unwrap().starts_with(gem_dir)), "{v:#}");
        assert_eq!((v["railtie"].clone(), v["install_hook"].clone()), (json!(true), json!(true)), "{v:#}");
        let hooks = v["hooks"].as_array().unwrap();
        assert!(hooks.contains(&json!("mysql2")) && hooks.contains(&json!("postgresql")), "{v:#}");
        assert!(v["mysql2"].as_str().unwrap().starts_with("app@"), "{v:#}");
        assert_eq!(v["postgresql"], "app", "{v:#}");
    }
    assert_eq!((m.auth_failures(db::APP_USER), p.auth_failures(db::APP_USER)), (0, 0), "a login was refused");

    // Negative control: with the Railtie told not to install the hook, database.yml has no user or password
    // to log in with (mysql2 then tries root without a password).
    let (v, _) = boot_on(&Stack::Debian12, &mysql, &pg, false).await;
    let stderr = v.expect_err("the app connected without the hook");
    println!(
        "=== Debian 12: the same app with config.secrets_sidecar.install_hook = false (negative control): refused"
    );
    assert!(stderr.contains("Access denied for user 'root'"), "{stderr}");
    assert_eq!(m.auth_failures("root"), 1, "the server did not refuse the hookless login");
}

async fn boot_on(stack: &Stack, mysql: &Db, pg: &Db, install_hook: bool) -> (Result<Value, String>, String) {
    let stack = stack.clone();
    let mysql = Db { port: mysql.port, password: mysql.password.clone() };
    let pg = Db { port: pg.port, password: pg.password.clone() };
    tokio::task::spawn_blocking(move || build_install_boot(&stack, &mysql, &pg, install_hook)).await.unwrap()
}
