use super::*;
use crate::cert::testutil::TestIssuer;

const NOW: i64 = 1_800_000_000;

fn doc(i: &TestIssuer, epoch: u64, iat: i64, revoked: Revoked) -> String {
    sign(
        &i.key,
        &i.kid,
        &RevocationPayload {
            iss: "signer".into(),
            iat,
            seb: RevocationClaims {
                v: 1,
                revocation_epoch: epoch,
                min_policy_epoch: 2,
                revoked,
            },
        },
    )
}

fn state(i: &TestIssuer) -> RevocationState {
    RevocationState::new(TrustedIssuers::new([i.issuer(Some("signer"))]))
}

#[test]
fn applies_and_answers_lookups() {
    let i = TestIssuer::new();
    let s = state(&i);
    assert!(s.current("signer").is_none());
    let r = Revoked {
        jti: vec!["c1".into()],
        sub: vec!["agent:bad".into()],
        kid: vec!["k-old".into()],
    };
    assert_eq!(
        s.apply(&doc(&i, 3, NOW, r), NOW, 30).unwrap(),
        Applied::Updated { epoch: 3 }
    );
    let d = s.current("signer").unwrap();
    assert_eq!((d.epoch, d.min_policy_epoch), (3, 2));
    assert!(d.revoked("k", "c1", "agent:a").is_some());
    assert!(d.revoked("k", "c2", "agent:bad").is_some());
    assert!(d.revoked("k-old", "c2", "agent:a").is_some());
    assert!(d.revoked("k", "c2", "agent:a").is_none());
}

#[test]
fn never_goes_backwards() {
    let i = TestIssuer::new();
    let s = state(&i);
    s.apply(&doc(&i, 5, NOW, Revoked::default()), NOW, 30)
        .unwrap();
    assert!(s
        .apply(&doc(&i, 4, NOW + 10, Revoked::default()), NOW + 10, 30)
        .is_err());
    assert!(s
        .apply(&doc(&i, 5, NOW - 10, Revoked::default()), NOW, 30)
        .is_err());
    assert_eq!(
        s.apply(&doc(&i, 5, NOW, Revoked::default()), NOW, 30)
            .unwrap(),
        Applied::Unchanged { epoch: 5 }
    );
    // Same epoch, fresher: accepted as a heartbeat.
    assert!(s
        .apply(&doc(&i, 5, NOW + 60, Revoked::default()), NOW + 60, 30)
        .is_ok());
    assert_eq!(s.current("signer").unwrap().iat, NOW + 60);
}

#[test]
fn same_epoch_cannot_drop_entries() {
    let i = TestIssuer::new();
    let s = state(&i);
    s.apply(
        &doc(
            &i,
            5,
            NOW,
            Revoked {
                jti: vec!["c1".into()],
                ..Default::default()
            },
        ),
        NOW,
        30,
    )
    .unwrap();
    assert!(s
        .apply(&doc(&i, 5, NOW + 1, Revoked::default()), NOW + 1, 30)
        .is_err());
    assert!(s
        .apply(&doc(&i, 6, NOW + 1, Revoked::default()), NOW + 1, 30)
        .is_ok());
}

/// A document the trusted issuer really signed that repeats a key. Read with the last key
/// winning, each would revoke less than the signer listed (or move the epoch), so each is
/// refused and the data already loaded stays.
#[test]
fn signed_document_with_a_repeated_key_is_refused() {
    let i = TestIssuer::new();
    let s = state(&i);
    let listed = Revoked {
        jti: vec!["c1".into()],
        ..Default::default()
    };
    s.apply(&doc(&i, 3, NOW, listed.clone()), NOW, 30).unwrap();
    let good = serde_json::to_string(&RevocationPayload {
        iss: "signer".into(),
        iat: NOW + 1,
        seb: RevocationClaims {
            v: 1,
            revocation_epoch: 4,
            min_policy_epoch: 2,
            revoked: listed,
        },
    })
    .unwrap();
    for (name, bad) in [
        (
            "revoked list",
            good.replacen(r#""jti":["c1"]"#, r#""jti":["c1"],"jti":[]"#, 1),
        ),
        (
            "escaped spelling",
            good.replacen(r#""jti":["c1"]"#, r#""jti":["c1"],"j\u0074i":[]"#, 1),
        ),
        (
            "epoch",
            good.replacen(
                r#""revocation_epoch":4"#,
                r#""revocation_epoch":4,"revocation_epoch":9"#,
                1,
            ),
        ),
    ] {
        assert_ne!(bad, good, "{name}: the test payload was not edited");
        let token = jws::sign_bytes(&i.key, REVOCATION_TYP, &i.kid, bad.as_bytes());
        let err = s.apply(&token, NOW + 1, 30).unwrap_err();
        assert!(err.contains("duplicate"), "{name}: {err}");
    }
    let d = s.current("signer").unwrap();
    assert_eq!(d.epoch, 3);
    assert!(d.revoked("k", "c1", "agent:a").is_some());
}

#[test]
fn refuses_untrusted_forged_and_future_documents() {
    let i = TestIssuer::new();
    let s = state(&i);
    let other = TestIssuer::new();
    assert!(s
        .apply(&doc(&other, 1, NOW, Revoked::default()), NOW, 30)
        .is_err());
    assert!(s
        .apply(&doc(&i, 1, NOW + 600, Revoked::default()), NOW, 30)
        .is_err());
    // A certificate is not a revocation document, even from the same key.
    let cert = i.sign(&crate::cert::testutil::payload(NOW));
    assert!(s.apply(&cert, NOW, 30).unwrap_err().contains("typ"));
    assert!(s.current("signer").is_none());
}

fn doc_as(i: &TestIssuer, iss: &str, epoch: u64, revoked: Revoked) -> String {
    sign(
        &i.key,
        &i.kid,
        &RevocationPayload {
            iss: iss.into(),
            iat: NOW,
            seb: RevocationClaims {
                v: 1,
                revocation_epoch: epoch,
                min_policy_epoch: 0,
                revoked,
            },
        },
    )
}

/// Issuer B's newer epoch leaves issuer A's revocations in force, and each document
/// governs only its own issuer's certificates.
#[test]
fn each_issuer_has_its_own_revocations() {
    let (a, b) = (TestIssuer::new(), TestIssuer::new());
    let s = RevocationState::new(TrustedIssuers::new([
        a.issuer(Some("a")),
        b.issuer(Some("b")),
    ]));
    let revoke_c1 = Revoked {
        jti: vec!["c1".into()],
        ..Default::default()
    };
    s.apply(&doc_as(&a, "a", 3, revoke_c1), NOW, 30).unwrap();
    s.apply(&doc_as(&b, "b", 9, Revoked::default()), NOW, 30)
        .unwrap();
    assert!(s.current("a").unwrap().revoked("k", "c1", "x").is_some());
    assert!(s.current("b").unwrap().revoked("k", "c1", "x").is_none());
    assert_eq!(s.current("a").unwrap().epoch, 3);
    // A key signs only for its own issuer.
    let e = s
        .apply(&doc_as(&b, "a", 10, Revoked::default()), NOW, 30)
        .unwrap_err();
    assert!(e.contains("signs for issuer"), "{e}");
    assert_eq!(s.current("a").unwrap().epoch, 3);
}

/// What was accepted is loaded again by the next broker: pushed revocations stay, and an
/// older document is still refused as a rollback, even when the persisted document no
/// longer verifies (its key rotated out of the configuration).
#[test]
fn accepted_documents_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let i = TestIssuer::new();
    let s = state(&i).persisted_in(dir.path(), NOW, 30).unwrap();
    let r = Revoked {
        jti: vec!["c1".into()],
        ..Default::default()
    };
    s.apply(&doc(&i, 4, NOW, r), NOW, 30).unwrap();
    drop(s);

    let s = state(&i).persisted_in(dir.path(), NOW + 5, 30).unwrap();
    assert!(s
        .current("signer")
        .unwrap()
        .revoked("k", "c1", "x")
        .is_some());
    let e = s
        .apply(&doc(&i, 3, NOW + 5, Revoked::default()), NOW + 5, 30)
        .unwrap_err();
    assert!(e.contains("never goes backwards"), "{e}");

    // The same issuer name under a new key: the old document does not verify, its epoch
    // is still the floor.
    let rotated = TestIssuer::new();
    let s = state(&rotated)
        .persisted_in(dir.path(), NOW + 5, 30)
        .unwrap();
    assert!(s.current("signer").is_none());
    let e = s
        .apply(&doc(&rotated, 3, NOW + 5, Revoked::default()), NOW + 5, 30)
        .unwrap_err();
    assert!(e.contains("never goes backwards"), "{e}");
    s.apply(&doc(&rotated, 5, NOW + 6, Revoked::default()), NOW + 6, 30)
        .unwrap();
}

/// Two brokers sharing a state directory (or the pusher and the poller of one): the
/// older document written last does not roll back the newer one on disk.
#[test]
fn a_writer_never_rolls_back_another() {
    let dir = tempfile::tempdir().unwrap();
    let i = TestIssuer::new();
    let a = state(&i).persisted_in(dir.path(), NOW, 30).unwrap();
    let b = state(&i).persisted_in(dir.path(), NOW, 30).unwrap();
    let r = Revoked {
        jti: vec!["c1".into()],
        ..Default::default()
    };
    a.apply(&doc(&i, 5, NOW, r), NOW, 30).unwrap();
    b.apply(&doc(&i, 3, NOW + 1, Revoked::default()), NOW + 1, 30)
        .unwrap();
    // b learnt the newer floor from the disk while writing.
    let e = b
        .apply(&doc(&i, 4, NOW + 2, Revoked::default()), NOW + 2, 30)
        .unwrap_err();
    assert!(e.contains("never goes backwards"), "{e}");
    let restarted = state(&i).persisted_in(dir.path(), NOW + 2, 30).unwrap();
    let d = restarted.current("signer").unwrap();
    assert_eq!(d.epoch, 5);
    assert!(d.revoked("k", "c1", "x").is_some());
}

#[test]
fn an_unreadable_state_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STATE_FILE), "{").unwrap();
    let i = TestIssuer::new();
    assert!(state(&i).persisted_in(dir.path(), NOW, 30).is_err());
}

#[test]
fn each_refusal_says_what_was_wrong() {
    let i = TestIssuer::new();
    let s = state(&i);
    let e = s
        .apply(&doc(&i, 1, NOW + 600, Revoked::default()), NOW, 30)
        .unwrap_err();
    assert!(e.contains("clock behind"), "{e}");
    assert_eq!(s.last_refusal().as_deref(), Some(e.as_str()));
    let e = s
        .apply(
            &doc(&TestIssuer::new(), 1, NOW, Revoked::default()),
            NOW,
            30,
        )
        .unwrap_err();
    assert!(e.contains("rotated out"), "{e}");
}

/// The audit log hears of each new epoch, not of the heartbeat re-signing the same one; and
/// what it logged installs again into a state that lost it, never below what is held.
#[test]
fn new_epochs_are_told_and_logged_ones_restore() {
    let i = TestIssuer::new();
    let s = state(&i);
    let told = Arc::new(Mutex::new(Vec::new()));
    let t = told.clone();
    s.on_applied(Box::new(move |iss, p| {
        t.lock().unwrap().push((iss.to_string(), p.clone()))
    }));
    let revoked = Revoked {
        jti: vec!["c1".into()],
        ..Revoked::default()
    };
    s.apply(&doc(&i, 1, NOW, Revoked::default()), NOW, 30)
        .unwrap();
    s.apply(&doc(&i, 1, NOW + 5, Revoked::default()), NOW + 5, 30)
        .unwrap();
    s.apply(&doc(&i, 2, NOW + 6, revoked.clone()), NOW + 6, 30)
        .unwrap();
    s.apply(&doc(&i, 2, NOW + 9, revoked), NOW + 9, 30).unwrap();
    let logged = told.lock().unwrap().clone();
    let epochs: Vec<u64> = logged.iter().map(|(_, p)| p.epoch).collect();
    assert_eq!(epochs, [1, 2], "a heartbeat is not a new epoch");

    // A broker that lost epoch 2 (its state file rolled back to epoch 1) gets it back.
    let fresh = state(&i);
    fresh
        .apply(&doc(&i, 1, NOW, Revoked::default()), NOW, 30)
        .unwrap();
    assert_eq!(fresh.restore_logged(&logged, NOW + 10, 30), 1);
    let d = fresh.current("signer").unwrap();
    assert_eq!(d.epoch, 2);
    assert!(d.revoked("k", "c1", "agent:a").is_some());
    // Nothing goes below what is held, and a logged document that does not verify is skipped.
    assert_eq!(fresh.restore_logged(&logged, NOW + 10, 30), 0);
    let other = TestIssuer::new();
    let forged = vec![(
        "signer".to_string(),
        Persisted {
            epoch: 9,
            iat: NOW,
            document: doc(&other, 9, NOW, Revoked::default()),
        },
    )];
    assert_eq!(fresh.restore_logged(&forged, NOW + 10, 30), 0);
    assert_eq!(fresh.current("signer").unwrap().epoch, 2);
}
