//! Tests of the credentials cache: refresh ahead, single flight, serving old credentials
//! while a refresh fails.

use super::*;
use aws_credential_types::provider::future;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone)]
struct Counting {
    calls: Arc<AtomicUsize>,
    fail_after: usize,
    lifetime: Duration,
}

impl ProvideCredentials for Counting {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n >= self.fail_after {
            return future::ProvideCredentials::ready(Err(
                aws_credential_types::provider::error::CredentialsError::not_loaded(
                    "endpoint down",
                ),
            ));
        }
        future::ProvideCredentials::ready(Ok(Credentials::new(
            format!("AKID{n}"),
            "secret",
            None,
            Some(SystemTime::now() + self.lifetime),
            "test",
        )))
    }
}

fn cache(fail_after: usize, lifetime: Duration) -> (Arc<CredentialCache>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = Arc::new(CredentialCache::new(Counting {
        calls: calls.clone(),
        fail_after,
        lifetime,
    }));
    (cache, calls)
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::test]
async fn caches_until_refresh_is_due() {
    let (cache, calls) = cache(usize::MAX, Duration::from_secs(3600));
    for _ in 0..10 {
        assert_eq!(cache.get().await.expect("creds").access_key_id(), "AKID0");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        cache.refresh().await.expect("creds").access_key_id(),
        "AKID1"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn refreshes_ahead_in_the_background() {
    // Inside the refresh-ahead window but not expired.
    let (cache, calls) = cache(usize::MAX, Duration::from_secs(120));
    assert_eq!(cache.get().await.expect("creds").access_key_id(), "AKID0");
    // Due for refresh: served at once, refreshed behind the caller's back.
    assert_eq!(cache.get().await.expect("creds").access_key_id(), "AKID0");
    settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.get().await.expect("creds").access_key_id(), "AKID1");
}

#[tokio::test]
async fn keeps_old_ones_while_refresh_fails() {
    let (cache, calls) = cache(1, Duration::from_secs(120));
    assert_eq!(cache.get().await.expect("creds").access_key_id(), "AKID0");
    for _ in 0..5 {
        assert_eq!(cache.get().await.expect("creds").access_key_id(), "AKID0");
        settle().await;
    }
    assert!(calls.load(Ordering::SeqCst) >= 2);
    assert_eq!(
        cache.refresh().await.expect("old ones").access_key_id(),
        "AKID0"
    );
}

#[tokio::test]
async fn single_flight() {
    let (cache, calls) = cache(usize::MAX, Duration::from_secs(3600));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get().await.map(|c| c.access_key_id().to_owned()) })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("join").expect("creds"), "AKID0");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn failures_are_shared_and_backed_off() {
    let (cache, calls) = cache(0, Duration::from_secs(3600));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get().await.map(|_| ()) })
        })
        .collect();
    for task in tasks {
        let error = task.await.expect("join").expect_err("no creds");
        assert!(error.to_string().contains("endpoint down"));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one fetch for twenty callers"
    );
    assert!(cache.get().await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1, "backed off");
}

#[tokio::test]
async fn no_credentials_names_the_sources() {
    let (cache, _) = cache(0, Duration::from_secs(3600));
    let err = cache.get().await.expect_err("no creds");
    let text = err.to_string();
    assert!(text.contains("endpoint down"), "{text}");
    assert!(text.contains("ECS container credentials"), "{text}");
}

#[test]
fn masks_all_but_four() {
    assert_eq!(mask_access_key("AKIAABCDEFGH1234"), "************1234");
    assert_eq!(mask_access_key("abc"), "abc");
}

#[tokio::test]
async fn a_rejection_is_worth_a_second_login_only_with_another_key() {
    let (cache, calls) = cache(usize::MAX, Duration::from_secs(3600));
    let used = cache.get().await.expect("creds");
    assert!(cache.refresh_after_rejection(&used).await.expect("fetched"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "fetched again: another key"
    );
    // Another login signed with the old key, rejected too: the cache has moved on already.
    assert!(cache.refresh_after_rejection(&used).await.expect("held"));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "not fetched a third time");

    let same = Arc::new(CredentialCache::new(Credentials::new(
        "AKIDSAME", "secret", None, None, "static",
    )));
    let used = same.get().await.expect("creds");
    assert!(
        !same.refresh_after_rejection(&used).await.expect("fetched"),
        "the same key again: a second login would be rejected too"
    );
}
