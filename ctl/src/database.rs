//! `ctl database credentials`: what a database client needs when the
//! cluster's `[database] auth` is on, shown or written as files.
//!
//! RethinkDB's is a user and a password (its `admin`, with the password the
//! coordinator generated); etcd's a client certificate and key from the
//! cluster CA (new on every call, valid 30 days: etcd cannot revoke one)
//! and the CA. Files are written 0600 into a directory the caller names;
//! nothing is written anywhere by default.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use apiary_proto::DatabaseCredentialsResponse;
use serde_json::json;

use crate::commands::CtlError;

/// The files `--out DIR` writes, per kind.
pub const PASSWORD_FILE: &str = "password";
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "client.pem";
pub const KEY_FILE: &str = "client.key";

/// Whether the credentials are a certificate (etcd) rather than a password.
fn is_certificate(c: &DatabaseCredentialsResponse) -> bool {
    !c.cert_pem.is_empty()
}

/// Writes the credentials into `dir` (created if missing), each file 0600;
/// the paths written.
pub fn write_files(c: &DatabaseCredentialsResponse, dir: &Path) -> Result<Vec<PathBuf>, CtlError> {
    if dir.exists() && !dir.is_dir() {
        return Err(CtlError::Usage(format!(
            "--out {}: not a directory; name a directory to write the credentials into",
            dir.display()
        )));
    }
    let files: Vec<(&str, &str)> = if is_certificate(c) {
        vec![
            (CA_FILE, &c.ca_pem),
            (CERT_FILE, &c.cert_pem),
            (KEY_FILE, &c.key_pem),
        ]
    } else {
        vec![(PASSWORD_FILE, &c.password)]
    };
    let mut written = Vec::new();
    for (name, content) in files {
        let path = dir.join(name);
        apiary_certs::write_private(&path, content.as_bytes())
            .map_err(|e| CtlError::Failed(format!("writing {}: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

/// The `--json` form: the secret itself, and the files when written.
pub fn credentials_json(c: &DatabaseCredentialsResponse, files: &[PathBuf]) -> serde_json::Value {
    let mut v = if is_certificate(c) {
        json!({
            "kind": c.kind, "client_port": c.client_port,
            "ca_pem": c.ca_pem, "cert_pem": c.cert_pem, "key_pem": c.key_pem,
            "not_after_unix": c.not_after_unix,
        })
    } else {
        json!({
            "kind": c.kind, "client_port": c.client_port,
            "user": c.user, "password": c.password,
        })
    };
    if !files.is_empty() {
        v["files"] = json!(
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
        );
    }
    v
}

/// The text form: the secret (or where it was written) and how to use it.
pub fn credentials_text(
    c: &DatabaseCredentialsResponse,
    files: &[PathBuf],
) -> Result<String, CtlError> {
    let server = format!("{}-1", c.kind);
    if is_certificate(c) {
        let dir = match files.first().and_then(|f| f.parent()) {
            Some(dir) => dir.display().to_string(),
            None => {
                return Err(CtlError::Usage(format!(
                    "{}'s credentials are a client certificate and its key: write them with --out DIR \
                     (or print them with --json)",
                    c.kind
                )));
            }
        };
        let until =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(c.not_after_unix));
        return Ok(format!(
            "wrote {dir}/{CA_FILE}, {dir}/{CERT_FILE} and {dir}/{KEY_FILE} (0600); the certificate is valid until {until}\n\
             use them through a tunnel, e.g.:\n  \
             ctl tunnel {server}:{port} --local 127.0.0.1:{port} &\n  \
             etcdctl --endpoints https://127.0.0.1:{port} --cacert {dir}/{CA_FILE} --cert {dir}/{CERT_FILE} --key {dir}/{KEY_FILE} member list\n",
            port = c.client_port,
        ));
    }
    let mut text = match files.first() {
        Some(f) => format!(
            "user: {}\npassword: written to {} (0600)\n",
            c.user,
            f.display()
        ),
        None => format!("user: {}\npassword: {}\n", c.user, c.password),
    };
    text.push_str(&format!(
        "use them through a tunnel, e.g.:\n  \
         ctl tunnel {server}:{port} --local 127.0.0.1:{port} &\n  \
         r.connect(\"127.0.0.1\", {port}, user=\"{user}\", password=PASSWORD)   # any RethinkDB driver\n",
        port = c.client_port,
        user = c.user,
    ));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rethinkdb() -> DatabaseCredentialsResponse {
        DatabaseCredentialsResponse {
            kind: "rethinkdb".into(),
            client_port: 28015,
            user: "admin".into(),
            password: "s3cret".into(),
            ..Default::default()
        }
    }

    fn etcd() -> DatabaseCredentialsResponse {
        DatabaseCredentialsResponse {
            kind: "etcd".into(),
            client_port: 2379,
            ca_pem: "CA".into(),
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
            not_after_unix: 1_800_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn a_password_is_shown_or_written_0600() {
        let text = credentials_text(&rethinkdb(), &[]).expect("text");
        assert!(
            text.starts_with("user: admin\npassword: s3cret\n"),
            "{text}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_files(&rethinkdb(), &dir.path().join("db")).expect("written");
        assert_eq!(std::fs::read_to_string(&files[0]).expect("read"), "s3cret");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files[0])
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = credentials_text(&rethinkdb(), &files).expect("text");
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(credentials_json(&rethinkdb(), &[])["password"], "s3cret");
    }

    #[test]
    fn a_certificate_needs_out_or_json_and_is_written_as_three_files() {
        let err = credentials_text(&etcd(), &[]).expect_err("needs --out");
        assert!(
            matches!(err, CtlError::Usage(_)) && err.to_string().contains("--out DIR"),
            "{err}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_files(&etcd(), dir.path()).expect("written");
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().and_then(|n| n.to_str()).unwrap_or(""))
            .collect();
        assert_eq!(names, [CA_FILE, CERT_FILE, KEY_FILE]);
        let text = credentials_text(&etcd(), &files).expect("text");
        assert!(
            text.contains("etcdctl --endpoints https://127.0.0.1:2379"),
            "{text}"
        );
        let file = dir.path().join("ca.pem");
        assert!(matches!(
            write_files(&etcd(), &file),
            Err(CtlError::Usage(_))
        ));
        assert_eq!(
            credentials_json(&etcd(), &files)["files"]
                .as_array()
                .map(Vec::len),
            Some(3)
        );
    }
}
