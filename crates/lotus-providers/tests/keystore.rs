//! The encrypted key store: keys survive a round trip, never appear in the file, and a wrong
//! passphrase, a flipped byte or a changed parameter opens nothing and changes nothing.

use std::path::Path;

use lotus_providers::{KeyStore, KeyStoreError, Secret};

const KEY: &str = "sk-proj-KEYSTORE-TEST-0123456789abcdef";

fn store_with_key(path: &Path) -> KeyStore {
    let mut store = KeyStore::create(path, "correct horse").expect("create");
    store.set("openai", Secret::new(KEY)).expect("set");
    store
        .set("anthropic", Secret::new("sk-ant-second"))
        .expect("set");
    store.save().expect("save");
    store
}

#[test]
fn keys_round_trip_and_are_never_in_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.enc");
    store_with_key(&path);

    let bytes = std::fs::read(&path).expect("read");
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains(KEY) && !text.contains("KEYSTORE"), "{text}");
    assert!(!text.contains("openai"), "even names are sealed: {text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("keys.enc")]);

    let store = KeyStore::open(&path, "correct horse").expect("open");
    assert_eq!(store.get("openai").expect("openai").expose(), KEY);
    let names: Vec<_> = store.list().into_iter().map(|k| k.name).collect();
    assert_eq!(names, ["anthropic", "openai"]);
    let listed = format!("{:?} {:?}", store.list(), store);
    assert!(!listed.contains(KEY), "{listed}");

    // Saving again seals under a fresh nonce: the same keys, different bytes.
    store.save().expect("save");
    assert_ne!(std::fs::read(&path).expect("read"), bytes);
    assert_eq!(
        KeyStore::open(&path, "correct horse")
            .expect("open")
            .get("openai")
            .expect("openai")
            .expose(),
        KEY
    );
}

#[test]
fn a_wrong_passphrase_or_an_altered_file_opens_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.enc");
    store_with_key(&path);
    let original = std::fs::read(&path).expect("read");

    let err = KeyStore::open(&path, "wrong horse").expect_err("wrong passphrase");
    assert!(
        matches!(err, KeyStoreError::WrongPassphrase { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("LOTUS_KEYS_PASSPHRASE"), "{err}");
    assert_eq!(std::fs::read(&path).expect("read"), original, "untouched");

    // One flipped character of the ciphertext.
    let mut v: serde_json::Value = serde_json::from_slice(&original).expect("json");
    let ct = v["ciphertext"].as_str().expect("ciphertext").to_owned();
    let mut chars: Vec<char> = ct.chars().collect();
    chars[10] = if chars[10] == 'A' { 'B' } else { 'A' };
    v["ciphertext"] = chars.into_iter().collect::<String>().into();
    std::fs::write(&path, serde_json::to_vec(&v).expect("json")).expect("write");
    let err = KeyStore::open(&path, "correct horse").expect_err("tampered");
    assert!(
        matches!(err, KeyStoreError::WrongPassphrase { .. }),
        "{err}"
    );

    // A weakened cost parameter is part of the authenticated header.
    let mut v: serde_json::Value = serde_json::from_slice(&original).expect("json");
    v["kdf"]["iterations"] = 1.into();
    std::fs::write(&path, serde_json::to_vec(&v).expect("json")).expect("write");
    let err = KeyStore::open(&path, "correct horse").expect_err("weakened");
    assert!(
        matches!(err, KeyStoreError::WrongPassphrase { .. }),
        "{err}"
    );

    // A cost no machine should be made to pay is refused before any work.
    v["kdf"]["memory_kib"] = u32::MAX.into();
    std::fs::write(&path, serde_json::to_vec(&v).expect("json")).expect("write");
    let err = KeyStore::open(&path, "correct horse").expect_err("huge");
    assert!(matches!(err, KeyStoreError::Corrupt { .. }), "{err}");

    std::fs::write(&path, b"{not json").expect("write");
    let err = KeyStore::open(&path, "correct horse").expect_err("garbage");
    assert!(
        matches!(err, KeyStoreError::Corrupt { .. }) && err.to_string().contains("lotus key set"),
        "{err}"
    );
}

#[test]
fn bad_input_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.enc");
    assert!(matches!(
        KeyStore::create(&path, ""),
        Err(KeyStoreError::EmptyPassphrase)
    ));
    let mut store = KeyStore::create(&path, "pw").expect("create");
    let err = store
        .set("Open AI", Secret::new("k"))
        .expect_err("bad name");
    assert!(err.to_string().contains("`Open AI`"), "{err}");
    let err = store.set("openai", Secret::new("  ")).expect_err("empty");
    assert!(err.to_string().contains("empty"), "{err}");
    assert!(!path.exists(), "nothing is written before save");
}

#[test]
fn a_new_passphrase_reseals_and_the_old_one_stops_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.enc");
    let mut store = store_with_key(&path);
    store.change_passphrase("battery staple").expect("change");
    store.save().expect("save");
    assert!(KeyStore::open(&path, "correct horse").is_err());
    let reopened = KeyStore::open(&path, "battery staple").expect("open");
    assert_eq!(reopened.get("openai").expect("openai").expose(), KEY);
}

/// A key sealed for keeping elsewhere opens with the same passphrase (also from another
/// machine's store), only for the provider it was sealed for, and not once altered.
#[test]
fn sealed_keys_open_only_for_their_provider_under_the_same_passphrase() {
    let dir = tempfile::tempdir().expect("tempdir");
    let here = store_with_key(&dir.path().join("keys.enc"));
    let sealed = here.seal("openai", &Secret::new(KEY)).expect("seal");
    assert!(sealed.starts_with("lotus-sealed:1:"), "{sealed}");
    assert!(!sealed.contains(KEY) && !sealed.contains("KEYSTORE"));
    assert_ne!(
        sealed,
        here.seal("openai", &Secret::new(KEY)).expect("seal"),
        "a fresh nonce each time"
    );
    assert_eq!(
        here.unseal("openai", &sealed).expect("unseal").expose(),
        KEY
    );

    // Another machine's store (another salt), same passphrase: opens.
    let there = KeyStore::create(&dir.path().join("other.enc"), "correct horse").expect("create");
    assert_eq!(
        there.unseal("openai", &sealed).expect("unseal").expose(),
        KEY
    );
    // Another passphrase, another provider, or a changed byte: does not, and says what to do.
    let stranger = KeyStore::create(&dir.path().join("x.enc"), "wrong horse").expect("create");
    for (store, context, value) in [
        (&stranger, "openai", sealed.clone()),
        (&here, "anthropic", sealed.clone()),
        (&here, "openai", {
            let mut b = sealed.clone().into_bytes();
            let at = b.len() - 6;
            b[at] = if b[at] == b'A' { b'B' } else { b'A' };
            String::from_utf8(b).expect("utf8")
        }),
        (&here, "openai", "sk-plain-text".to_owned()),
    ] {
        let e = store.unseal(context, &value).expect_err("must not open");
        assert!(matches!(e, KeyStoreError::Unsealable { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("lotus provider set {context} --key")),
            "{msg}"
        );
        assert!(!msg.contains(KEY));
    }
}
