//! The `--on-change 'WATCH=ACTION'` grammar: what an action watches, what it does (an HTTP request to a
//! loopback URL, or a signal), and its options. Parsed once at start; every error names the offending
//! part, and never a URL's query (a user may put a token there, although `token-file=` is the way).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::entry::valid_name;
use crate::secret::SecretString;

/// An on-change action's `timeout=` when none is given: bounds connect and response of an HTTP action.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// An on-change action's `debounce=` when none is given: the quiet time after the last change before it
/// fires, so several secrets rotated together cause one restart.
pub const DEFAULT_ACTION_DEBOUNCE: Duration = Duration::from_secs(5);
/// The query parameter an HTTP action's token goes in when `token-param=` is not given: the one Puma's
/// control app reads.
pub const DEFAULT_TOKEN_PARAM: &str = "token";

/// One `--on-change 'WATCH=ACTION'` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnChange {
    /// The published names whose changes fire the action (one or more, `+`-joined on the command line).
    pub watch: Vec<String>,
    pub action: Action,
    pub timeout: Duration,
    pub debounce: Duration,
    /// Also fire after the initial publish at start.
    pub initial: bool,
}

/// What an on-change action does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A request to a loopback URL, e.g. Puma's control app.
    Http(HttpAction),
    /// A signal to a process of the task (`pidMode: task`).
    Signal { signal: SignalName, target: SignalTarget },
}

/// `http METHOD URL [token-file=PATH] [token-param=NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAction {
    pub method: String,
    /// As written in the URL: `127.0.0.1`, `[::1]`, `localhost`.
    pub host: String,
    pub port: u16,
    pub path: String,
    /// The URL's own query, if any. Redacted in `Debug` and never logged: it may hold a credential.
    pub query: Option<SecretString>,
    /// A file whose trimmed content is sent as the query parameter `token_param`, read at each firing.
    pub token_file: Option<PathBuf>,
    pub token_param: String,
}

impl HttpAction {
    /// `http://host:port/path`: what logs show of the URL (never its query).
    pub fn display_url(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// A signal an action may send. The names are the ones an app server acts on (Puma: USR1 phased restart,
/// USR2 restart, HUP reopen logs, TERM stop…); the number comes from the platform at send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalName {
    Hup,
    Int,
    Quit,
    Term,
    Usr1,
    Usr2,
    Winch,
    Ttin,
    Ttou,
    Cont,
}

impl SignalName {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalName::Hup => "HUP",
            SignalName::Int => "INT",
            SignalName::Quit => "QUIT",
            SignalName::Term => "TERM",
            SignalName::Usr1 => "USR1",
            SignalName::Usr2 => "USR2",
            SignalName::Winch => "WINCH",
            SignalName::Ttin => "TTIN",
            SignalName::Ttou => "TTOU",
            SignalName::Cont => "CONT",
        }
    }
}

impl FromStr for SignalName {
    type Err = OnChangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.strip_prefix("SIG").unwrap_or(s);
        Ok(match name {
            "HUP" => SignalName::Hup,
            "INT" => SignalName::Int,
            "QUIT" => SignalName::Quit,
            "TERM" => SignalName::Term,
            "USR1" => SignalName::Usr1,
            "USR2" => SignalName::Usr2,
            "WINCH" => SignalName::Winch,
            "TTIN" => SignalName::Ttin,
            "TTOU" => SignalName::Ttou,
            "CONT" => SignalName::Cont,
            _ => return Err(OnChangeError::BadSignal(s.to_owned())),
        })
    }
}

/// Which process a signal action reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalTarget {
    /// The pid in this file, read at each firing (Puma's `pidfile`).
    PidFile(PathBuf),
    /// Every process whose `/proc/PID/comm` or `argv[0]` file name is this.
    Process(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OnChangeError {
    #[error(
        "expected WATCH=ACTION, e.g. 'app=http POST http://127.0.0.1:9293/phased-restart token-file=/secrets/puma.token'"
    )]
    NoEquals,
    #[error("watched name {0:?} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}")]
    BadName(String),
    #[error("watched name {0:?} is not a configured secret")]
    UnknownName(String),
    #[error("unknown action {0:?} (expected http or signal)")]
    UnknownAction(String),
    #[error("an http action needs METHOD and URL: http METHOD URL [token-file=PATH] [token-param=NAME]")]
    HttpArgs,
    #[error("method {0:?} is not an upper-case HTTP method such as GET or POST")]
    BadMethod(String),
    #[error("URL {0:?}: {1}")]
    BadUrl(String, &'static str),
    #[error("a signal action needs SIG and a target: signal SIG pidfile=PATH|process=NAME")]
    SignalArgs,
    #[error("signal {0:?} is not one of HUP, INT, QUIT, TERM, USR1, USR2, WINCH, TTIN, TTOU, CONT")]
    BadSignal(String),
    #[error("process name {0:?} must be 1 to 255 characters without '/'")]
    BadProcess(String),
    #[error("unknown or misplaced option {0:?}")]
    BadOption(String),
    #[error("option {0:?} is given twice")]
    DuplicateOption(String),
    #[error("{0:?}: {1}")]
    BadValue(String, String),
}

impl FromStr for OnChange {
    type Err = OnChangeError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let (watch, action) = entry.trim().split_once('=').ok_or(OnChangeError::NoEquals)?;
        let mut names = Vec::new();
        for name in watch.trim().split('+') {
            if !valid_name(name) {
                return Err(OnChangeError::BadName(name.to_owned()));
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
        let mut words = action.split_whitespace();
        let kind = words.next().unwrap_or_default();
        let mut positional = Vec::new();
        let mut options: Vec<(&str, &str)> = Vec::new();
        for word in words {
            match word.split_once('=') {
                // A URL's query has `=` too, but a URL is never an option name.
                Some((k, v)) if !k.contains(':') && !k.contains('/') => {
                    if options.iter().any(|(seen, _)| *seen == k) {
                        return Err(OnChangeError::DuplicateOption(k.to_owned()));
                    }
                    options.push((k, v));
                }
                _ => positional.push(word),
            }
        }
        let mut take = |key: &str| options.iter().position(|(k, _)| *k == key).map(|i| options.remove(i).1);
        let duration = |word: &str, v: &str| {
            humantime::parse_duration(v).map_err(|e| OnChangeError::BadValue(word.to_owned(), e.to_string()))
        };
        let timeout = match take("timeout") {
            Some(v) => {
                let t = duration(&format!("timeout={v}"), v)?;
                if t.is_zero() {
                    return Err(OnChangeError::BadValue(format!("timeout={v}"), "must be more than 0".into()));
                }
                t
            }
            None => DEFAULT_ACTION_TIMEOUT,
        };
        let debounce = match take("debounce") {
            Some(v) => duration(&format!("debounce={v}"), v)?,
            None => DEFAULT_ACTION_DEBOUNCE,
        };
        let initial = match take("initial") {
            Some("true") => true,
            Some("false") | None => false,
            Some(v) => {
                return Err(OnChangeError::BadValue(format!("initial={v}"), "expected true or false".into()));
            }
        };
        let action = match kind {
            "http" => {
                let [method, url] = positional[..] else { return Err(OnChangeError::HttpArgs) };
                let token_file = take("token-file").map(PathBuf::from);
                if token_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                    return Err(OnChangeError::BadValue("token-file=".into(), "the path is empty".into()));
                }
                let token_param = match take("token-param") {
                    Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) => {
                        p.to_owned()
                    }
                    Some(p) => {
                        return Err(OnChangeError::BadValue(
                            format!("token-param={p}"),
                            "expected a name of letters, digits, '_', '-' or '.'".into(),
                        ));
                    }
                    None => DEFAULT_TOKEN_PARAM.to_owned(),
                };
                let (host, port, path, query) = parse_loopback_url(url)?;
                if !(method.len() <= 16 && !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase())) {
                    return Err(OnChangeError::BadMethod(method.to_owned()));
                }
                Action::Http(HttpAction { method: method.to_owned(), host, port, path, query, token_file, token_param })
            }
            "signal" => {
                let [sig] = positional[..] else { return Err(OnChangeError::SignalArgs) };
                let signal: SignalName = sig.parse()?;
                let target = match (take("pidfile"), take("process")) {
                    (Some(p), None) if !p.is_empty() => SignalTarget::PidFile(PathBuf::from(p)),
                    (None, Some(n)) if !n.is_empty() && n.len() <= 255 && !n.contains('/') => {
                        SignalTarget::Process(n.to_owned())
                    }
                    (None, Some(n)) => return Err(OnChangeError::BadProcess(n.to_owned())),
                    _ => return Err(OnChangeError::SignalArgs),
                };
                Action::Signal { signal, target }
            }
            other => return Err(OnChangeError::UnknownAction(other.to_owned())),
        };
        if let Some((k, v)) = options.first() {
            return Err(OnChangeError::BadOption(format!("{k}={v}")));
        }
        Ok(OnChange { watch: names, action, timeout, debounce, initial })
    }
}

/// `entry` with the query of every URL in it replaced by `<redacted>`.
pub fn redact_queries(entry: &str) -> String {
    let mut out = String::with_capacity(entry.len());
    let mut rest = entry;
    while let Some(q) = rest.find('?') {
        // Only a URL's `?`: the word it is in has a scheme.
        let word_start = rest[..q].rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let end = rest[q..].find(char::is_whitespace).map_or(rest.len(), |i| q + i);
        if rest[word_start..q].contains("://") {
            out.push_str(&rest[..q]);
            out.push_str("?<redacted>");
        } else {
            out.push_str(&rest[..end]);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `http://HOST[:PORT]/PATH[?QUERY]` with HOST a loopback address or `localhost`: an action reaches a
/// process of the task, never the network (it would be a way to send requests, or tokens, elsewhere).
fn parse_loopback_url(url: &str) -> Result<(String, u16, String, Option<SecretString>), OnChangeError> {
    // The query is cut off first, so no error message ever repeats it.
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let bad = |why| OnChangeError::BadUrl(base.to_owned(), why);
    let rest = base.strip_prefix("http://").ok_or_else(|| bad("only http:// URLs to a loopback host"))?;
    if base.contains('#') {
        return Err(bad("a fragment is not sent"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(bad("credentials in the URL are not allowed; use token-file="));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') == h.ends_with(']')) && !p.contains(']') => {
            (h, p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("the port must be 1 to 65535"))?)
        }
        _ => (authority, 80),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok())
            .is_some_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(bad("the host must be loopback: 127.0.0.0/8, [::1] or localhost"));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("the path must be printable ASCII without spaces"));
    }
    if query.is_some_and(|q| !q.bytes().all(|b| b.is_ascii_graphic() && b != b'#')) {
        return Err(bad("the query must be printable ASCII without spaces"));
    }
    let query = query.filter(|q| !q.is_empty()).map(|q| SecretString::from(q.to_owned()));
    Ok((host.to_ascii_lowercase(), port, path.to_owned(), query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_change_http_entries_parse_into_their_parts() {
        let a: OnChange =
            "app+redis=http GET http://127.0.0.1:9293/phased-restart token-file=/secrets/puma.token debounce=1s"
                .parse()
                .unwrap();
        assert_eq!(
            a,
            OnChange {
                watch: vec!["app".into(), "redis".into()],
                action: Action::Http(HttpAction {
                    method: "GET".into(),
                    host: "127.0.0.1".into(),
                    port: 9293,
                    path: "/phased-restart".into(),
                    query: None,
                    token_file: Some("/secrets/puma.token".into()),
                    token_param: "token".into(),
                }),
                timeout: DEFAULT_ACTION_TIMEOUT,
                debounce: Duration::from_secs(1),
                initial: false,
            }
        );
        let a: OnChange = "app=http POST http://[::1]/r?x=y token-param=auth timeout=2s initial=true".parse().unwrap();
        let Action::Http(h) = &a.action else { panic!("not http") };
        assert_eq!((h.host.as_str(), h.port, h.path.as_str()), ("[::1]", 80, "/r"));
        assert_eq!((h.query.as_ref().map(|q| q.expose()), h.token_param.as_str()), (Some("x=y"), "auth"));
        assert_eq!((a.timeout, a.debounce, a.initial), (Duration::from_secs(2), DEFAULT_ACTION_DEBOUNCE, true));
        let a: OnChange = "app=http PUT http://LOCALHOST:1".parse().unwrap();
        let Action::Http(h) = a.action else { panic!("not http") };
        assert_eq!(h.display_url(), "http://localhost:1/");
    }

    #[test]
    fn on_change_signal_entries_parse_into_their_parts() {
        let a: OnChange = "app=signal SIGUSR1 pidfile=/app/tmp/puma.pid".parse().unwrap();
        assert_eq!(
            a.action,
            Action::Signal { signal: SignalName::Usr1, target: SignalTarget::PidFile("/app/tmp/puma.pid".into()) }
        );
        let a: OnChange = "db=signal HUP process=nginx debounce=0s".parse().unwrap();
        assert_eq!(a.action, Action::Signal { signal: SignalName::Hup, target: SignalTarget::Process("nginx".into()) });
        assert_eq!(a.debounce, Duration::ZERO);
    }

    #[test]
    fn on_change_errors_name_the_offending_value() {
        use OnChangeError as E;
        for (entry, err) in [
            ("app", E::NoEquals),
            ("../x=signal HUP pidfile=/p", E::BadName("../x".into())),
            ("app+=signal HUP pidfile=/p", E::BadName("".into())),
            ("app=exec /bin/true", E::UnknownAction("exec".into())),
            ("app=http http://127.0.0.1/", E::HttpArgs),
            ("app=http get http://127.0.0.1/", E::BadMethod("get".into())),
            (
                "app=http GET https://127.0.0.1/",
                E::BadUrl("https://127.0.0.1/".into(), "only http:// URLs to a loopback host"),
            ),
            (
                "app=http GET http://10.0.0.8:9293/x?token=abc",
                E::BadUrl(
                    "http://10.0.0.8:9293/x".into(),
                    "the host must be loopback: 127.0.0.0/8, [::1] or localhost",
                ),
            ),
            (
                "app=http GET http://169.254.170.2/v2/credentials",
                E::BadUrl(
                    "http://169.254.170.2/v2/credentials".into(),
                    "the host must be loopback: 127.0.0.0/8, [::1] or localhost",
                ),
            ),
            (
                "app=http GET http://127.0.0.1.evil.example/",
                E::BadUrl(
                    "http://127.0.0.1.evil.example/".into(),
                    "the host must be loopback: 127.0.0.0/8, [::1] or localhost",
                ),
            ),
            (
                "app=http GET http://u:p@127.0.0.1/",
                E::BadUrl("http://u:p@127.0.0.1/".into(), "credentials in the URL are not allowed; use token-file="),
            ),
            (
                "app=http GET http://127.0.0.1:0/",
                E::BadUrl("http://127.0.0.1:0/".into(), "the port must be 1 to 65535"),
            ),
            (
                "app=http GET http://127.0.0.1/ token-param=a&b",
                E::BadValue("token-param=a&b".into(), "expected a name of letters, digits, '_', '-' or '.'".into()),
            ),
            ("app=signal KILL pidfile=/p", E::BadSignal("KILL".into())),
            ("app=signal USR1", E::SignalArgs),
            ("app=signal USR1 pidfile=/p process=puma", E::SignalArgs),
            ("app=signal USR1 process=a/b", E::BadProcess("a/b".into())),
            ("app=signal USR1 pidfile=/p token-file=/t", E::BadOption("token-file=/t".into())),
            ("app=signal USR1 pidfile=/p retries=3", E::BadOption("retries=3".into())),
            ("app=signal USR1 pidfile=/p debounce=1s debounce=2s", E::DuplicateOption("debounce".into())),
            (
                "app=signal USR1 pidfile=/p initial=yes",
                E::BadValue("initial=yes".into(), "expected true or false".into()),
            ),
            ("app=signal USR1 pidfile=/p timeout=0s", E::BadValue("timeout=0s".into(), "must be more than 0".into())),
        ] {
            assert_eq!(entry.parse::<OnChange>(), Err(err), "{entry}");
        }
        let err = "app=signal USR1 pidfile=/p debounce=soon".parse::<OnChange>().unwrap_err();
        assert!(err.to_string().starts_with("\"debounce=soon\": "), "{err}");
    }
}
