//! The embedded store at startup: a damaged or unreadable `herald.redb` gives one clear error
//! naming the file and what to do, never a panic, however often the server is started.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::json;

/// Starts a server on `dir` in a task of its own, so a panic is seen as one: the error text of
/// a refused start, or `None` for a start that worked (then shut down again).
async fn start_error(dir: &Path) -> Option<String> {
    let config = common::config(dir);
    let started = tokio::spawn(async move {
        match herald_server::start(config).await {
            Ok(server) => {
                server.shutdown(Duration::from_secs(1)).await;
                None
            }
            Err(e) => Some(format!("{e:#}")),
        }
    })
    .await;
    started.expect("starting the server must not panic")
}

/// A store with enough in it to span many pages.
async fn filled_store(dir: &Path) {
    let server = herald_server::start(common::config(dir)).await.unwrap();
    let api = herald_client::Api::new(
        &format!("http://{}", server.local_addr),
        Some(common::ADMIN_KEY),
    );
    for i in 0..200 {
        let name = format!("channel-{i:03}-{}", "x".repeat(150));
        api.request_ok("POST", "/api/v1/channels", Some(&json!({ "name": name })))
            .await
            .unwrap();
    }
    server.shutdown(Duration::from_secs(2)).await;
}

fn assert_clear(error: &str, file: &Path) {
    assert!(
        error.contains(&file.display().to_string()),
        "names the file: {error}"
    );
    assert!(
        error.contains("Restore it from a backup") && error.contains("move it aside"),
        "says what to do: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_gives_one_clear_error_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    filled_store(dir.path()).await;
    let file = dir.path().join("herald.redb");
    let len = std::fs::metadata(&file).unwrap().len();
    assert!(len > 64 * 1024, "the store spans many pages: {len} bytes");
    let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.seek(SeekFrom::Start(len / 2 / 4096 * 4096)).unwrap();
    f.write_all(&[0xA5; 4096]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let first = start_error(dir.path())
        .await
        .expect("a damaged store is refused");
    assert_clear(&first, &file);
    let second = start_error(dir.path()).await.expect("and refused again");
    assert_clear(&second, &file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_not_a_store_gives_a_clear_error() {
    for junk in [&b"not a database at all"[..], &[0u8; 8192][..], &[]] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("herald.redb");
        std::fs::write(&file, junk).unwrap();
        if junk.is_empty() {
            // An empty file is what a crash right after creating it leaves: a new store.
            assert_eq!(start_error(dir.path()).await, None);
            continue;
        }
        let error = start_error(dir.path()).await.expect("refused");
        assert_clear(&error, &file);
    }
    // A folder where the file should be.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.redb");
    std::fs::create_dir(&file).unwrap();
    let error = start_error(dir.path()).await.expect("refused");
    assert!(error.contains(&file.display().to_string()), "{error}");
}
