//! The OS keychain as a key source, end to end: `credproxy secret set` stores a key, the
//! proxy applies it, `check` names the keychain item, `credproxy secret delete` removes it.
//! Runs against the Linux kernel keyring (keyutils), which works headless; where the
//! kernel refuses keyring calls (some containers), the test says so and skips.

use crate::support::*;

const KEY: &str = "sk-ant-keychain-SECRET-5151";

#[tokio::test]
async fn a_key_stored_with_secret_set_is_applied_and_secret_delete_removes_it() {
    let upstream = FakeUpstream::accepting_key(KEY).await;
    let scratch = Scratch::new();
    // Unique per run: the kernel keyring outlives the test process.
    let service = format!(
        "credproxy-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let config = config(&upstream.url(), &format!("keychain = \"{service}/key\""));

    let (status, stdout, stderr) = credproxy(&scratch, &config)
        .run_with_input(&["secret", "set", "key"], &format!("{KEY}\n"))
        .await;
    if stderr.contains("is not available here") {
        eprintln!("skipped: no usable keychain on this machine: {stderr}");
        return;
    }
    assert!(status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "stored the key of credential `key` in keychain {service}/key"
        )),
        "{stdout}"
    );

    let (status, stdout, stderr) = credproxy(&scratch, &config).run_async("check").await;
    assert!(status.success(), "{stdout}{stderr}");
    let row = stdout.lines().find(|l| l.starts_with("key ")).unwrap();
    let row = row.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(row, format!("key api_key keychain {service}/key never ok"));

    let proxy = credproxy(&scratch, &config).start();
    let answer = post(&proxy.url("/v1/messages"), "{}").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(upstream.requests()[0].header("x-api-key"), Some(KEY));
    assert!(!proxy.output().contains(KEY), "{}", proxy.output());
    drop(proxy);

    let (status, stdout, _) = credproxy(&scratch, &config)
        .run_with_input(&["secret", "delete", "key"], "")
        .await;
    assert!(status.success());
    assert!(
        stdout.contains("removed the key of credential `key`"),
        "{stdout}"
    );
    let (status, stdout, _) = credproxy(&scratch, &config).run_async("check").await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stdout.contains(&format!(
            "FAILED: keychain {service}/key holds no key; store one with `credproxy secret set key`"
        )),
        "{stdout}"
    );
}

#[tokio::test]
async fn secret_set_names_what_to_write_for_a_credential_without_a_keychain_entry() {
    let scratch = Scratch::new();
    let config = config("https://api.anthropic.com", r#"env = "ANTHROPIC_API_KEY""#);
    let (status, _, stderr) = credproxy(&scratch, &config)
        .run_with_input(&["secret", "set", "key"], "sk-x\n")
        .await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("credential `key` does not read its key from the keychain; write `keychain = \"credproxy/key\"`"),
        "{stderr}"
    );
    let (status, _, stderr) = credproxy(&scratch, &config)
        .run_with_input(&["secret", "set", "nope"], "sk-x\n")
        .await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("has no credential `nope`; its credentials are `key`"),
        "{stderr}"
    );
}
