//! The audit trail (`credstore.audit.path`): one JSON line per credential, role, grant and
//! privilege-group change a replica serves (and per `admin reset-root` and unlock), one per
//! failed login and one per login lock a replica's write started, so an operator can answer "who changed whom, from where, and did it stick". It
//! exists apart from `tracing` because that log is for diagnosis (levels, filters, free text)
//! while this one is a record with a fixed shape that is kept, rotated and shipped.
//!
//! [`Audit`] is a cheap handle; lines go through a bounded channel to one writer thread, so a
//! slow disk never holds a request: when the channel is full the line is dropped and counted
//! ([`Audit::dropped`], `credstore_audit_dropped_total`). The writer flushes after each burst
//! and reopens the file when [`Audit::reopen`] is called (SIGHUP, see [`reopen_on_sighup`]),
//! so `mv audit.log audit.log.1; kill -HUP` rotates it. `-` writes to stderr.
//!
//! Nothing here receives a password, hash, verifier or header: callers pass names, addresses
//! and classes only. Strings a client chose are clipped to [`MAX_FIELD_CHARS`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

/// Lines waiting for the writer at most; past this they are dropped and counted.
pub const QUEUE_LINES: usize = 4096;

/// The longest client-chosen string kept in a line, in characters.
pub const MAX_FIELD_CHARS: usize = 256;

/// Where the lines go, from `credstore.audit.path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Stderr,
    File(PathBuf),
}

impl Destination {
    /// `""`: no audit log; `"-"`: stderr; anything else: a file, appended to.
    pub fn parse(path: &str) -> Option<Destination> {
        match path {
            "" => None,
            "-" => Some(Destination::Stderr),
            path => Some(Destination::File(PathBuf::from(path))),
        }
    }
}

/// Why a login failed, as the audit line says it. The classes are exactly as fine as the
/// answer the client gets: an unknown user, a wrong password and a name that breaks the rules
/// are all `denied`, as they are all UNAUTHENTICATED with one text after the same work, so
/// the log (often shipped further than the store) is no better a user-enumeration oracle
/// than the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginFailure {
    /// No `authorization` header.
    MissingHeader,
    /// Not base64, no `user:` part (an API key) or a name that is not UTF-8.
    Malformed,
    /// Unknown user, wrong password or a name that is not exactly a valid one.
    Denied,
    /// The hashing queue was full, or the peer held its share of it (RESOURCE_EXHAUSTED).
    Busy,
    /// An API key or OIDC token refused, with the finer reason (`apikey_expired`,
    /// `jwt_bad_signature`, …): keys and tokens are random or signed, so saying why enumerates
    /// nothing.
    Credential(&'static str),
    /// The (name, address) pair or the name is locked (UNAUTHENTICATED, the lock answer).
    Locked,
    /// This replica was already verifying its share of the user's remaining attempts
    /// (RESOURCE_EXHAUSTED).
    Throttled,
}

impl LoginFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFailure::MissingHeader => "missing_header",
            LoginFailure::Malformed => "malformed",
            LoginFailure::Denied => "denied",
            LoginFailure::Busy => "busy",
            LoginFailure::Credential(reason) => reason,
            LoginFailure::Locked => "locked",
            LoginFailure::Throttled => "throttled",
        }
    }
}

/// One change request, whatever its outcome.
#[derive(Clone, Debug)]
pub struct Change<'a> {
    /// The gRPC method (`CreateCredential`) or `ResetRoot`.
    pub action: &'a str,
    /// The authenticated caller; `None` when authorization is off or for `admin reset-root`.
    pub user: Option<&'a str>,
    pub peer: Option<SocketAddr>,
    /// What it acted on: names as sent (`{"user": "alice"}`), never a secret.
    pub target: Map<String, Value>,
    /// The store revision of the (last) write; `None` when nothing was written.
    pub revision: Option<i64>,
    /// `ok` or the error class (`permission_denied`, `not_found`, …).
    pub result: &'a str,
}

/// The audit handle; clones share one writer. A disabled one ([`Audit::off`]) does nothing.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    lines: mpsc::Sender<Message>,
    reopen: Arc<AtomicBool>,
    dropped: AtomicU64,
}

#[derive(Debug)]
enum Message {
    Line(String),
    /// Nothing to write: look at the reopen flag.
    Wake,
    /// Answered once everything sent before it is written and flushed.
    Flush(oneshot::Sender<()>),
}

impl Audit {
    /// No audit log.
    pub fn off() -> Audit {
        Audit::default()
    }

    /// Opens `path` (see [`Destination::parse`]) and starts the writer thread. The file is
    /// created if missing and appended to; failing to open it stops start-up.
    pub fn open(path: &str) -> io::Result<Audit> {
        let Some(destination) = Destination::parse(path) else {
            return Ok(Audit::off());
        };
        let sink = Sink::open(destination)?;
        let (lines, receiver) = mpsc::channel(QUEUE_LINES);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        std::thread::Builder::new()
            .name("credstore-audit".into())
            .spawn(move || write_lines(sink, receiver, &flag))?;
        Ok(Audit {
            inner: Some(Arc::new(Inner {
                lines,
                reopen,
                dropped: AtomicU64::new(0),
            })),
        })
    }

    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Records a change request and its outcome.
    pub fn change(&self, change: Change<'_>) {
        if self.is_on() {
            self.send(change_line(now_rfc3339(), &change));
        }
    }

    /// Records a failed login: the user name as sent (`None` when none could be read), the
    /// peer and the class.
    pub fn login_failed(&self, user: Option<&str>, peer: Option<SocketAddr>, why: LoginFailure) {
        if self.is_on() {
            self.send(login_line(now_rfc3339(), user, peer, why));
        }
    }

    /// Records a lock: `user` (a canonical name, which may not exist) from `peer` (`None`:
    /// from every address, the account), after `failures`, until `until_ms` (ms since the
    /// Unix epoch).
    pub fn lockout(
        &self,
        user: &str,
        peer: Option<IpAddr>,
        scope: &str,
        failures: u32,
        until_ms: u64,
    ) {
        if self.is_on() {
            let until = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(until_ms);
            self.send(lockout_line(
                now_rfc3339(),
                user,
                peer,
                scope,
                failures,
                until,
            ));
        }
    }

    /// Asks the writer to reopen the file at its path before its next line (log rotation).
    pub fn reopen(&self) {
        if let Some(inner) = &self.inner {
            inner.reopen.store(true, Ordering::SeqCst);
            // A full queue wakes the writer anyway.
            let _ = inner.lines.try_send(Message::Wake);
        }
    }

    /// Waits until every line sent so far is written and flushed.
    pub async fn flush(&self) {
        if let Some(inner) = &self.inner {
            let (done, written) = oneshot::channel();
            if inner.lines.send(Message::Flush(done)).await.is_ok() {
                let _ = written.await;
            }
        }
    }

    /// Lines dropped because the writer fell [`QUEUE_LINES`] behind.
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |inner| inner.dropped.load(Ordering::Relaxed))
    }

    fn send(&self, line: String) {
        let Some(inner) = &self.inner else {
            return;
        };
        if inner.lines.try_send(Message::Line(line)).is_err() {
            let before = inner.dropped.fetch_add(1, Ordering::Relaxed);
            if before.is_power_of_two() || before == 0 {
                tracing::warn!(
                    dropped = before + 1,
                    "audit log falling behind: lines dropped"
                );
            }
        }
    }
}

/// Reopens `audit`'s file on every SIGHUP, for as long as the process runs: the listener is
/// installed before this returns (so a SIGHUP right after start-up does not kill the process),
/// then a task waits for the signals. `None` when the audit log is off or SIGHUP cannot be
/// caught. Several SIGHUP listeners may coexist (tokio hands each signal to every one).
pub fn reopen_on_sighup(audit: Audit) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    if !audit.is_on() {
        return None;
    }
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot catch SIGHUP; the audit log will not be reopened");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reopening the audit log");
            audit.reopen();
        }
    }))
}

/// The open destination.
enum Sink {
    Stderr,
    File {
        path: PathBuf,
        file: io::BufWriter<File>,
    },
}

impl Sink {
    fn open(destination: Destination) -> io::Result<Sink> {
        match destination {
            Destination::Stderr => Ok(Sink::Stderr),
            Destination::File(path) => {
                let file = append(&path)?;
                Ok(Sink::File { path, file })
            }
        }
    }

    fn reopen(&mut self) {
        if let Sink::File { path, file } = self {
            let _ = file.flush();
            match append(path) {
                Ok(reopened) => *file = reopened,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot reopen the audit log; still writing to the old file");
                }
            }
        }
    }

    fn write_line(&mut self, line: &str) -> io::Result<()> {
        match self {
            Sink::Stderr => {
                let mut stderr = io::stderr().lock();
                stderr.write_all(line.as_bytes())?;
                stderr.write_all(b"\n")
            }
            Sink::File { file, .. } => {
                file.write_all(line.as_bytes())?;
                file.write_all(b"\n")
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stderr => io::stderr().flush(),
            Sink::File { file, .. } => file.flush(),
        }
    }
}

fn append(path: &Path) -> io::Result<io::BufWriter<File>> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(io::BufWriter::new(file))
}

/// The writer thread: writes what arrives, flushes when the queue is momentarily empty, and
/// reopens the file when asked; ends when every handle is gone.
fn write_lines(mut sink: Sink, mut receiver: mpsc::Receiver<Message>, reopen: &AtomicBool) {
    while let Some(message) = receiver.blocking_recv() {
        if reopen.swap(false, Ordering::SeqCst) {
            sink.reopen();
        }
        let result = match message {
            Message::Line(line) => sink.write_line(&line),
            Message::Wake => Ok(()),
            Message::Flush(done) => {
                let flushed = sink.flush();
                let _ = done.send(());
                flushed
            }
        };
        let result = result.and_then(|()| match receiver.is_empty() {
            true => sink.flush(),
            false => Ok(()),
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
    let _ = sink.flush();
}

/// A change as one JSON line (no newline).
pub fn change_line(time: String, change: &Change<'_>) -> String {
    let line = json!({
        "time": time,
        "event": "change",
        "action": change.action,
        "user": change.user.map(clip),
        "peer": change.peer.map(|p| p.to_string()),
        "target": clip_values(&change.target),
        "revision": change.revision,
        "result": change.result,
    });
    line.to_string()
}

/// A failed login as one JSON line (no newline).
pub fn login_line(
    time: String,
    user: Option<&str>,
    peer: Option<SocketAddr>,
    why: LoginFailure,
) -> String {
    let line = json!({
        "time": time,
        "event": "login_failed",
        "user": user.map(clip),
        "peer": peer.map(|p| p.to_string()),
        "reason": why.as_str(),
    });
    line.to_string()
}

/// A lock as one JSON line (no newline).
pub fn lockout_line(
    time: String,
    user: &str,
    peer: Option<IpAddr>,
    scope: &str,
    failures: u32,
    until: SystemTime,
) -> String {
    let line = json!({
        "time": time,
        "event": "lockout",
        "user": clip(user),
        "peer": peer.map(|p| p.to_string()),
        "scope": scope,
        "failures": failures,
        "until": rfc3339(until),
    });
    line.to_string()
}

/// At most [`MAX_FIELD_CHARS`] characters of `text`.
fn clip(text: &str) -> &str {
    match text.char_indices().nth(MAX_FIELD_CHARS) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

fn clip_values(target: &Map<String, Value>) -> Value {
    let clipped = target
        .iter()
        .map(|(key, value)| (key.clone(), clip_value(value)))
        .collect();
    Value::Object(clipped)
}

fn clip_value(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(clip(s).to_string()),
        Value::Array(items) => {
            Value::Array(items.iter().take(MAX_FIELD_CHARS).map(clip_value).collect())
        }
        other => other.clone(),
    }
}

/// A target from `(key, value)` pairs: `target([("user", "alice".into())])`.
pub fn target<const N: usize>(fields: [(&str, Value); N]) -> Map<String, Value> {
    fields
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
}

/// The current time as RFC 3339 UTC with milliseconds (`2026-03-01T12:00:00.123Z`).
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `time` as RFC 3339 UTC with milliseconds.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn parse(line: &str) -> Value {
        serde_json::from_str(line).expect("a JSON line")
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |secs: u64, millis: u64| {
            rfc3339(UNIX_EPOCH + std::time::Duration::from_millis(secs * 1000 + millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(1_772_323_200 + 3723, 123), "2026-03-01T01:02:03.123Z");
    }

    #[test]
    fn a_change_line_has_every_field() {
        let peer: SocketAddr = "10.0.0.7:51234".parse().unwrap();
        let change = Change {
            action: "CreateCredential",
            user: Some("root"),
            peer: Some(peer),
            target: target([("user", "alice".into())]),
            revision: Some(42),
            result: "ok",
        };
        let line = change_line("2026-03-01T12:00:00.000Z".into(), &change);
        assert!(!line.contains('\n'));
        assert_eq!(
            parse(&line),
            json!({
                "time": "2026-03-01T12:00:00.000Z", "event": "change",
                "action": "CreateCredential", "user": "root", "peer": "10.0.0.7:51234",
                "target": {"user": "alice"}, "revision": 42, "result": "ok",
            })
        );
        let refused = Change {
            user: None,
            peer: None,
            revision: None,
            result: "permission_denied",
            ..change
        };
        let line = parse(&change_line("t".into(), &refused));
        assert_eq!(line["user"], Value::Null);
        assert_eq!(line["peer"], Value::Null);
        assert_eq!(line["revision"], Value::Null);
        assert_eq!(line["result"], "permission_denied");
    }

    #[test]
    fn a_login_line_escapes_and_clips_the_name_as_sent() {
        let hostile = format!("eve\"\n\u{3000}{}", "x".repeat(1000));
        let line = login_line("t".into(), Some(&hostile), None, LoginFailure::Denied);
        assert_eq!(
            line.lines().count(),
            1,
            "one line whatever the name: {line}"
        );
        let parsed = parse(&line);
        assert_eq!(parsed["event"], "login_failed");
        assert_eq!(parsed["reason"], "denied");
        let user = parsed["user"].as_str().unwrap();
        assert!(user.starts_with("eve\"\n\u{3000}x"));
        assert_eq!(user.chars().count(), MAX_FIELD_CHARS);
        let none = parse(&login_line("t".into(), None, None, LoginFailure::Malformed));
        assert_eq!(none["user"], Value::Null);
        assert_eq!(none["reason"], "malformed");
    }

    #[test]
    fn a_lockout_line_says_who_from_where_and_until_when() {
        let until = UNIX_EPOCH + std::time::Duration::from_secs(1_772_323_200);
        let peer = "10.0.0.9".parse().ok();
        let line = lockout_line("t".into(), "alice", peer, "pair", 5, until);
        assert_eq!(
            parse(&line),
            json!({
                "time": "t", "event": "lockout", "user": "alice", "peer": "10.0.0.9",
                "scope": "pair", "failures": 5, "until": "2026-03-01T00:00:00.000Z",
            })
        );
        let account = parse(&lockout_line(
            "t".into(),
            "alice",
            None,
            "account",
            100,
            until,
        ));
        assert_eq!(account["peer"], Value::Null);
        assert_eq!(account["scope"], "account");
    }

    #[test]
    fn destinations() {
        assert_eq!(Destination::parse(""), None);
        assert_eq!(Destination::parse("-"), Some(Destination::Stderr));
        assert_eq!(
            Destination::parse("/var/log/a.log"),
            Some(Destination::File("/var/log/a.log".into()))
        );
    }

    #[tokio::test]
    async fn lines_reach_the_file_and_reopen_follows_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Audit::open(path.to_str().unwrap()).unwrap();
        audit.login_failed(Some("a"), None, LoginFailure::Denied);
        audit.flush().await;
        std::fs::rename(&path, dir.path().join("audit.log.1")).unwrap();
        audit.login_failed(Some("b"), None, LoginFailure::Denied);
        audit.flush().await;
        audit.reopen();
        audit.login_failed(Some("c"), None, LoginFailure::Busy);
        audit.flush().await;
        let old = std::fs::read_to_string(dir.path().join("audit.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(old.lines().count(), 2, "{old}");
        assert_eq!(new.lines().count(), 1, "{new}");
        assert_eq!(parse(new.trim())["user"], "c");
        assert_eq!(audit.dropped(), 0);
    }

    #[test]
    fn off_does_nothing() {
        let audit = Audit::off();
        assert!(!audit.is_on());
        audit.login_failed(Some("a"), None, LoginFailure::Denied);
        audit.reopen();
        assert_eq!(audit.dropped(), 0);
    }
}
