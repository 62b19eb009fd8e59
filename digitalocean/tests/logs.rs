//! The token's absence from logs and messages. Alone in its test binary:
//! tracing caches per-callsite interest process-wide, so a thread-local
//! subscriber can miss events while other tests run in parallel.

// Tests panic on the unexpected by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use apiary_digitalocean::fake::FakeOptions;
use apiary_digitalocean::{Client, reconcile, teardown};
use common::{TOKEN, names, setup, tag_name};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged at TRACE during a faulty reconcile and teardown, and
/// every message and Debug output, is free of the token.
#[tokio::test]
async fn the_token_never_reaches_logs_or_messages() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let options = FakeOptions {
        random: Some(apiary_digitalocean::fake::RandomFaults {
            rate_limit: 0.2,
            server_error: 0.1,
            server_error_after_apply: true,
            seed: 11,
        }),
        ..FakeOptions::default()
    };
    let env = setup(options, |_| {}).await;
    let client = env.client();
    let report = reconcile(&client, &env.target("apiary-log", &names("h", 3)))
        .await
        .expect("reconcile");
    let down = teardown(&client, &tag_name("apiary-log"))
        .await
        .expect("teardown");
    let err = Client::new(&env.config)
        .expect("client")
        .get_vpc("not-a-uuid")
        .await
        .unwrap_err();

    let logs =
        String::from_utf8_lossy(&capture.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert!(
        logs.contains("digitalocean_api"),
        "spans were logged:\n{logs}"
    );
    let everything = format!(
        "{logs}{report}{report:?}{down}{down:?}{err}{err:?}{client:?}{:?}",
        env.config
    );
    assert!(!everything.contains(TOKEN), "the token leaked");
    assert!(
        !everything.contains("0123456789abcdef"),
        "part of the token leaked"
    );
}
